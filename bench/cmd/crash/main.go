// Command crash kills examples/broker with SIGKILL, over and over, while
// publishers send QoS 1 and 2 messages to persistent subscribers, and checks
// after the last restart that every message a publisher saw acknowledged
// (PUBACK, PUBCOMP) reached every subscriber and that no QoS 2 message
// reached one twice:
//
//	go run ./bench/cmd/crash -cycles 200 -sync always
//
// It is the long form of the example broker's TestAcceptanceD8 (the same
// check, crashcheck, with a few cycles); it is not part of CI. Run it from
// the repository root: it builds the broker. It exits non-zero when a check
// fails, printing what was lost or duplicated and the seed that reproduces
// the kill points.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/mqtthooks/mqtthooks/examples/broker/crashcheck"
)

func main() {
	cycles := flag.Int("cycles", 200, "how many times to kill the broker")
	maxAcks := flag.Int("max-acks", 500, "kill after a random number of acknowledgements in [1, max-acks]")
	sync := flag.String("sync", "always", "the broker's -sync policy (always, none, or a duration)")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "seed of the kill points")
	race := flag.Bool("race", false, "build the broker with the race detector")
	flag.Parse()
	if err := run(*cycles, *maxAcks, *sync, *seed, *race); err != nil {
		fmt.Fprintln(os.Stderr, "crash:", err)
		os.Exit(1)
	}
}

func run(cycles, maxAcks int, sync string, seed uint64, race bool) error {
	tmp, err := os.MkdirTemp("", "mqtthooks-crash-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "broker")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./examples/broker")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building examples/broker (run from the repository root): %w", err)
	}
	dir := filepath.Join(tmp, "data")
	fmt.Printf("seed %d, %d cycles, -sync %s\n", seed, cycles, sync)
	rep, err := crashcheck.Run(context.Background(), crashcheck.Options{
		Start: func(ctx context.Context) (crashcheck.Broker, error) {
			return crashcheck.Exec(ctx, exec.Command(bin, "-addr", "127.0.0.1:0", "-data-dir", dir, "-sync", sync,
				"-max-queued", "-1"), nil)
		},
		Cycles:  cycles,
		MaxAcks: maxAcks,
		Seed:    seed,
		Drain:   2 * time.Minute,
		Logf: func(format string, args ...any) {
			fmt.Printf(format+"\n", args...)
		},
	})
	du, _ := dirSize(dir)
	fmt.Printf("cycles %d, acknowledged %d (unacknowledged at the kills %d), subscribers %d, received %d, "+
		"of which redelivered %d; data dir %d bytes; %s\n", rep.Cycles, rep.Acked, rep.Unacked, rep.Subscribers,
		rep.Received, rep.Redelivered, du, rep.Elapsed.Round(time.Second))
	return err
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return err
	})
	return n, err
}
