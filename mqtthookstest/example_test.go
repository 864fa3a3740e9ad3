package mqtthookstest_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// tenantPlugin is the plugin under test: it puts every client on the
// mountpoint of its username's tenant ("acme.alice" → "acme").
type tenantPlugin struct{}

func (tenantPlugin) AuthOnRegister(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	tenant, _, ok := strings.Cut(req.Connect.Username, ".")
	if !ok {
		return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
	}
	return mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: tenant, ClientID: req.SubscriberID.ClientID}),
	})
}

// Testing your own plugin: put it in a chain with a Recorder, connect fake
// clients, and check the CONNACK and the hooks that ran.
func Example_testAPlugin() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	rec := new(mqtthookstest.Recorder) // records, decides nothing
	_ = chain.Register("tenant", tenantPlugin{})
	_ = chain.Register("recorder", rec)
	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{Router: rec.Router(), PublishWill: rec.PublishWill})
	defer core.Shutdown(context.Background())
	ctx := context.Background()

	ok := mqtthookstest.ConnectV3(ctx, core, "sensor-1", "acme.alice", true)
	bad := mqtthookstest.ConnectV3(ctx, core, "sensor-2", "nobody", true)
	fmt.Println("acme.alice:", ok.Connack().ReturnCode, "session", ok.Session.ID())
	fmt.Println("nobody:", bad.Connack().ReturnCode)

	_ = ok.Subscribe(ctx, "temp/#")
	_ = ok.Disconnect(ctx, mqtthooks.CodeNormalDisconnection)
	fmt.Println(rec.Hooks(mqtthooks.SubscriberID{Mountpoint: "acme", ClientID: "sensor-1"}))
	// Output:
	// acme.alice: 0 (accepted) session acme/sensor-1
	// nobody: 4 (bad user name or password)
	// [OnClientWakeup OnRegister Add RemoveAll OnClientGone]
}

// A Recorder that accepts everybody stands in for an auth plugin while you
// test lifecycle hooks.
func ExampleRecorder() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	rec := &mqtthookstest.Recorder{Accept: true}
	_ = chain.Register("P", rec)
	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{})
	defer core.Shutdown(context.Background())
	ctx := context.Background()

	c1 := mqtthookstest.ConnectV5(ctx, core, "c1", "u", false, 300)
	c2 := mqtthookstest.ConnectV5(ctx, core, "c1", "u", false, 300) // takes over
	fmt.Println("C2 session present:", c2.Connack().SessionPresent)
	<-c1.Conn.Disconnected()
	fmt.Println("C1 told:", c1.Conn.Disconnects())
	for _, c := range rec.CallsFor(mqtthooks.SubscriberID{ClientID: "c1"}) {
		fmt.Println(c.Hook, c.Event.Reason)
	}
	// Output:
	// C2 session present: true
	// C1 told: [0x8e (session taken over)]
	// AuthOnRegisterM5 none
	// OnClientWakeup none
	// OnRegisterM5 none
	// AuthOnRegisterM5 none
	// OnClientOffline taken-over
	// OnClientWakeup none
	// OnRegisterM5 none
}

// A two-step MQTT 5 enhanced authentication, driven by the fake client.
func ExampleClient_Auth() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	rec := &mqtthookstest.Recorder{Accept: true}
	rec.OnAuthM5Func = func(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		if req.Step == mqtthooks.AuthStepStart {
			return mqtthooks.AuthContinue([]byte("challenge"), "expecting response")
		}
		if req.State == "expecting response" && string(req.Data) == "response" {
			return mqtthooks.AuthSuccess([]byte("welcome"), "alice")
		}
		return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "")
	}
	_ = chain.Register("P", rec)
	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{})
	defer core.Shutdown(context.Background())
	ctx := context.Background()

	c := mqtthookstest.NewClient(core)
	req := mqtthookstest.V5("c1", "", true, 0)
	req.Properties.AuthenticationMethod = "EXAMPLE"
	step := c.Connect(ctx, req)
	fmt.Println(step.Kind, string(step.Auth.Data))
	step = c.Auth(ctx, []byte("response"))
	fmt.Println(step.Kind, step.Connack.ReasonCode, string(step.Connack.Properties.AuthenticationData))
	// Output:
	// send-auth challenge
	// send-connack 0x00 (success) welcome
}
