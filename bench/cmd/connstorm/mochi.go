package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/plugins/passwd"
)

// serveMochiFlag is the hidden first argument with which connstorm runs
// itself as the mochi-mqtt broker, a process of its own like the others, so
// that its CPU time is read the same way:
//
//	connstorm -serve-mochi ADDR [-passwd FILE]
//
// It serves until SIGINT or SIGTERM. Without -passwd every client is
// accepted (mochi's AllowHook).
const serveMochiFlag = "-serve-mochi"

// mochiAuth checks passwords for mochi with the same plugin and file as ours.
type mochiAuth struct {
	mqtt.HookBase
	p *passwd.Plugin
}

func (h *mochiAuth) ID() string { return "passwd" }

func (h *mochiAuth) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *mochiAuth) OnConnectAuthenticate(_ *mqtt.Client, pk packets.Packet) bool {
	c := &pk.Connect
	r := h.p.AuthOnRegister(context.Background(), &mqtthooks.RegisterRequest{Connect: &mqtthooks.ConnectRequest{
		Username: string(c.Username), HasUsername: c.UsernameFlag, Password: c.Password, HasPassword: c.PasswordFlag}})
	return r.Verdict() == mqtthooks.VerdictAccept
}

func (h *mochiAuth) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// serveMochi is the child process: args are what follows -serve-mochi.
func serveMochi(args []string) error {
	if len(args) == 0 {
		return errors.New(serveMochiFlag + " ADDR [-passwd FILE]")
	}
	addr := args[0]
	fs := flag.NewFlagSet("connstorm "+serveMochiFlag, flag.ContinueOnError)
	file := fs.String("passwd", "", "password file; none: anonymous clients are accepted")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var hook mqtt.Hook = new(auth.AllowHook)
	if *file != "" {
		p, err := passwd.Open(*file)
		if err != nil {
			return err
		}
		hook = &mochiAuth{p: p}
	}
	server := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := server.AddHook(hook, nil); err != nil {
		return err
	}
	if err := server.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	if err := server.Serve(); err != nil {
		return err
	}
	<-sigs
	return server.Close()
}

// startMochi runs this program again as the mochi broker, checking passwords
// against file ("": anonymous).
func startMochi(addr, file string) (*brokerProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{serveMochiFlag, addr}
	if file != "" {
		args = append(args, "-passwd", file)
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	return startProcess(cmd, addr)
}
