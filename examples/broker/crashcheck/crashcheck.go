// Package crashcheck kills an MQTT broker with SIGKILL while publishers send
// QoS 1 and QoS 2 messages to persistent subscribers, restarts it on the same
// data directory, and checks what MQTT promises a publisher: every message
// whose PUBACK (QoS 1) or PUBCOMP (QoS 2) it received reaches every
// subscriber, and no QoS 2 message reaches one twice.
//
// The example broker's tests run a few cycles of it; bench/cmd/crash runs
// many. Clients are real: paho.golang (MQTT 5) and paho.mqtt.golang (MQTT
// 3.1.1). What a subscriber receives is read off the wire, under the client
// library, so that a duplicate the library would hide still counts.
package crashcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Broker is a running broker process.
type Broker interface {
	// Addr is the host:port it listens on.
	Addr() string
	// Kill sends SIGKILL and waits for the process to end.
	Kill() error
	// Stop asks the process to shut down (SIGTERM) and waits; it reports a
	// non-zero exit.
	Stop() error
}

// Options configure a run. Start is required.
type Options struct {
	// Start starts the broker on the run's data directory, which stays the
	// same from one call to the next. It returns once the broker listens.
	Start func(ctx context.Context) (Broker, error)
	// Cycles is how many times the broker is killed (default 3).
	Cycles int
	// MaxAcks bounds the acknowledgements publishers receive in a cycle
	// before the kill; the number is drawn uniformly from [1, MaxAcks]
	// (default 200).
	MaxAcks int
	// Seed makes the kill points reproducible.
	Seed uint64
	// Drain bounds how long, after the last restart, the subscribers may
	// take to receive every acknowledged message (default 30s).
	Drain time.Duration
	// Logf, if set, reports progress.
	Logf func(format string, args ...any)
}

// Report is what a run saw.
type Report struct {
	Cycles int
	// KilledAfter is, per cycle, the acknowledgements received before the kill.
	KilledAfter []int
	// Acked is the number of messages the publishers saw acknowledged;
	// Unacked the number they sent without seeing the acknowledgement.
	Acked, Unacked int
	// Subscribers is how many subscribers had to receive each of them.
	Subscribers int
	// Received counts PUBLISH packets subscribers read, Redelivered those
	// among them that repeated an earlier one (QoS 1 duplicates and QoS 2
	// retransmissions with the same packet identifier, both allowed).
	Received, Redelivered int
	// Elapsed is the run's duration.
	Elapsed time.Duration
}

// Violation is an error naming each broken promise.
type Violation struct{ Problems []string }

func (v *Violation) Error() string {
	const show = 20
	p := v.Problems
	more := ""
	if len(p) > show {
		more = fmt.Sprintf("\n... and %d more", len(p)-show)
		p = p[:show]
	}
	return fmt.Sprintf("crashcheck: %d problems:\n%s%s", len(v.Problems), strings.Join(p, "\n"), more)
}

// Run runs the check. It returns a *Violation when a message was lost or a
// QoS 2 message was delivered twice, and another error when the run could
// not be made (the broker did not start, a client could not connect).
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Start == nil {
		return Report{}, errors.New("crashcheck: Options.Start is nil")
	}
	if o.Cycles <= 0 {
		o.Cycles = 3
	}
	if o.MaxAcks <= 0 {
		o.MaxAcks = 200
	}
	if o.Drain <= 0 {
		o.Drain = 30 * time.Second
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	began := time.Now()
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	subs := []*subscriber{
		{name: "v5-online", v5: true, online: true},
		{name: "v5-offline", v5: true},
		{name: "v3-online", online: true},
		{name: "v3-offline"},
	}
	for _, s := range subs {
		s.init()
	}
	r := run{subs: subs, acked: map[string]string{}}
	rep := Report{Cycles: o.Cycles, Subscribers: len(subs)}

	for cycle := range o.Cycles {
		b, err := o.Start(ctx)
		if err != nil {
			return rep, fmt.Errorf("crashcheck: cycle %d: start: %w", cycle, err)
		}
		k := 1 + rng.IntN(o.MaxAcks)
		err = r.cycle(ctx, b, cycle, k)
		if kerr := b.Kill(); err == nil && kerr != nil {
			err = fmt.Errorf("kill: %w", kerr)
		}
		r.closeAll()
		if err != nil {
			return rep, fmt.Errorf("crashcheck: cycle %d: %w", cycle, err)
		}
		rep.KilledAfter = append(rep.KilledAfter, k)
		logf("cycle %d: killed after %d acknowledgements (%d acknowledged so far)", cycle, k, len(r.acked))
	}

	b, err := o.Start(ctx)
	if err != nil {
		return rep, fmt.Errorf("crashcheck: final start: %w", err)
	}
	err = r.drain(ctx, b, o.Drain)
	r.closeAll()
	if serr := b.Stop(); err == nil && serr != nil {
		err = fmt.Errorf("crashcheck: stopping the broker: %w", serr)
	}
	rep.Acked, rep.Unacked = len(r.acked), r.unacked
	for _, s := range subs {
		rep.Received += s.received
		rep.Redelivered += s.redelivered
	}
	rep.Elapsed = time.Since(began)
	if err != nil {
		return rep, err
	}
	if problems := r.problems(); len(problems) > 0 {
		return rep, &Violation{Problems: problems}
	}
	return rep, nil
}

// run is the state kept across cycles.
type run struct {
	subs    []*subscriber
	mu      sync.Mutex
	acked   map[string]string // payload -> topic
	unacked int
}

// cycle connects the subscribers (the offline ones leave again at once),
// publishes until k acknowledgements have come back, and returns; the
// caller kills the broker.
func (r *run) cycle(ctx context.Context, b Broker, cycle, k int) error {
	for _, s := range r.subs {
		if err := s.connect(ctx, b.Addr(), cycle == 0); err != nil {
			return err
		}
		if !s.online {
			s.close()
		}
	}
	var (
		wg     sync.WaitGroup
		acks   = make(chan struct{}, k)
		stop   = make(chan struct{})
		failed = make(chan struct{})
		first  error
		once   sync.Once
	)
	fail := func(err error) { once.Do(func() { first = err; close(failed) }) }
	pubCtx, cancel := context.WithCancel(ctx) // ends the publishes the kill left unanswered
	defer cancel()
	for p := range 4 {
		wg.Go(func() {
			ctx := pubCtx
			pub, err := dialPublisher(ctx, b.Addr(), fmt.Sprintf("pub-%d", p), p == 3)
			if err != nil {
				select {
				case <-stop: // the others had the acknowledgements the kill waited for
				default:
					fail(err)
				}
				return
			}
			defer pub.close()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				qos := byte(1 + seq%2)
				payload := fmt.Sprintf("c%d-p%d-%d-q%d", cycle, p, seq, qos)
				r.mu.Lock()
				r.unacked++
				r.mu.Unlock()
				topic := "crash/" + fmt.Sprint(p)
				if err := pub.publish(ctx, topic, qos, payload); err != nil {
					return // the broker is gone: this one stays unacknowledged
				}
				r.mu.Lock()
				r.unacked--
				r.acked[payload] = topic
				r.mu.Unlock()
				select {
				case acks <- struct{}{}:
				default:
				}
			}
		})
	}
wait:
	for range k {
		select {
		case <-acks:
		case <-failed:
			break wait
		}
	}
	close(stop)
	if err := b.Kill(); err != nil {
		fail(fmt.Errorf("kill: %w", err))
	}
	cancel()
	wg.Wait()
	return first
}

// drain reconnects every subscriber and waits until each has received every
// acknowledged message.
func (r *run) drain(ctx context.Context, b Broker, limit time.Duration) error {
	for _, s := range r.subs {
		if err := s.connect(ctx, b.Addr(), false); err != nil {
			return err
		}
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for _, s := range r.subs {
		select {
		case <-s.await(r.acked):
		case <-deadline.C:
			return nil // problems() reports what is missing
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (r *run) closeAll() {
	for _, s := range r.subs {
		s.close()
	}
}

// problems lists what was lost or delivered twice.
func (r *run) problems() []string {
	var out []string
	for _, s := range r.subs {
		s.mu.Lock()
		out = append(out, s.problems...)
		s.mu.Unlock()
		missing := s.missing(r.acked)
		slices.Sort(missing)
		for _, p := range missing {
			out = append(out, fmt.Sprintf("%s: acknowledged message %s never delivered", s.name, p))
		}
	}
	return out
}

// Exec starts a broker command that logs "listening addr=HOST:PORT" to its
// standard error once it listens (the example broker does), and returns it
// once that line appears. Everything the process logs is copied to log, if
// not nil.
func Exec(ctx context.Context, cmd *exec.Cmd, log io.Writer) (Broker, error) {
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	addrs := make(chan string, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if log != nil {
				fmt.Fprintln(log, line)
			}
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case addrs <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case p.addr = <-addrs:
		return p, nil
	case <-p.done:
		err := cmd.Wait()
		return nil, fmt.Errorf("the broker exited before listening: %v", err)
	case <-ctx.Done():
		_ = p.Kill()
		return nil, ctx.Err()
	}
}

var listening = regexp.MustCompile(`msg=listening addr=(\S+)`)

type process struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{} // the log reader has seen EOF
	once sync.Once
	err  error
}

func (p *process) Addr() string { return p.addr }

func (p *process) Kill() error {
	return p.end(syscall.SIGKILL)
}

func (p *process) Stop() error {
	return p.end(syscall.SIGTERM)
}

func (p *process) end(sig syscall.Signal) error {
	p.once.Do(func() {
		if err := p.cmd.Process.Signal(sig); err != nil {
			p.err = err
		}
		<-p.done // Wait closes the pipe; read it to the end first
		err := p.cmd.Wait()
		if sig == syscall.SIGKILL {
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
				err = nil
			}
		}
		p.err = errors.Join(p.err, err)
	})
	return p.err
}
