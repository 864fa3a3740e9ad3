// Package procs starts the processes the bench tools measure: it builds the
// example broker, finds free ports and waits for a listener.
package procs

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// BuildBroker builds examples/broker into dir and returns the binary's
// path. The tools run from the repository root.
func BuildBroker(dir string) (string, error) {
	bin := filepath.Join(dir, "broker")
	build := exec.Command("go", "build", "-o", bin, "./examples/broker")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building examples/broker (run from the repository root): %w", err)
	}
	return bin, nil
}

// FreeAddr returns a loopback address nothing listens on now.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// WaitListening waits until addr accepts connections, for at most 30 s.
func WaitListening(addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if nc, err := net.Dial("tcp", addr); err == nil {
			nc.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond) // polling a process we started, not a test
	}
	return fmt.Errorf("nothing listens on %s", addr)
}
