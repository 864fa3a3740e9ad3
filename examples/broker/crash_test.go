package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks/examples/broker/crashcheck"
)

// childEnv, when set, makes the test binary run the broker (see TestMain),
// so that the crash test kills a real process without building one.
const childEnv = "MQTTHOOKS_EXAMPLE_BROKER_CHILD"

// ACCEPTANCE D8: the broker with -data-dir is killed (SIGKILL) at random
// moments while publishers send QoS 1 and 2 messages to persistent
// subscribers, online and offline, MQTT 5 and 3.1.1; after each restart on
// the same directory every message whose PUBACK or PUBCOMP a publisher
// received reaches every subscriber, and no QoS 2 message reaches one twice.
// bench/cmd/crash runs the same check for longer.
func TestAcceptanceD8CrashLosesNoAcknowledgedMessage(t *testing.T) {
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var log io.Writer
	if testing.Verbose() {
		log = testWriter{t}
	}
	rep, err := crashcheck.Run(context.Background(), crashcheck.Options{
		Start: func(ctx context.Context) (crashcheck.Broker, error) {
			cmd := exec.Command(os.Args[0], "-addr", "127.0.0.1:0", "-data-dir", dir, "-max-queued", "-1")
			cmd.Env = append(os.Environ(), childEnv+"=1")
			return crashcheck.Exec(ctx, cmd, log)
		},
		Cycles:  8,
		MaxAcks: 150,
		Seed:    seed,
		Logf:    t.Logf,
	})
	t.Logf("%+v", rep)
	require.NoError(t, err)
	require.Positive(t, rep.Acked, "the check checked something")
}
