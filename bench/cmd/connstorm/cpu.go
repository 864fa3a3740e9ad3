package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// which is 100 on Linux for x86 and arm64; getconf says it if it can.
var clockTicks = func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}()

// tick is the resolution of the CPU figures.
func tick() time.Duration { return time.Second / time.Duration(clockTicks) }

// processCPU returns the CPU time (utime + stime, every thread, those that
// have ended included) process pid has used so far; pid 0 is this process.
func processCPU(pid int) (time.Duration, error) {
	t, err := processTimes(pid)
	return t.user + t.sys, err
}

// times are a process's utime and stime.
type times struct{ user, sys time.Duration }

func (t times) sub(u times) times { return times{t.user - u.user, t.sys - u.sys} }

// processTimes returns the utime and stime of process pid (0: this one).
func processTimes(pid int) (times, error) {
	name := "/proc/self/stat"
	if pid != 0 {
		name = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return times{}, err
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses, so
	// the fields are counted from the last ')'. utime and stime are fields
	// 14 and 15 of the line, 12th and 13th after the comm.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return times{}, fmt.Errorf("%s: no comm", name)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return times{}, fmt.Errorf("%s: %d fields", name, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return times{}, fmt.Errorf("%s: utime %q stime %q", name, f[11], f[12])
	}
	return times{time.Duration(utime) * tick(), time.Duration(stime) * tick()}, nil
}

// machineBusy returns the CPU time all the machine's cores have spent
// outside idle and iowait so far, from the first line of /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest and guest_nice are in user and nice already
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q", line)
		}
		busy += n
	}
	return time.Duration(busy) * tick(), nil
}

// settle is how long the meter waits after the last operation before it
// reads the CPU times: the broker finishes the work of the last
// DISCONNECTs and PUBACKs, idle otherwise.
const settle = 100 * time.Millisecond

// meter takes the CPU time of the broker's process and of this one (the
// load generator) at the start and at the end of a measured phase.
type meter struct {
	pid     int   // the broker's process; 0: not known, no broker figure
	broker  times // the broker's
	client  time.Duration
	machine time.Duration // every process's, for what else ran
	wall    time.Duration
	t0      time.Time
	err     error
}

// begin starts the phase, just before the first operation.
func (m *meter) begin() {
	if m == nil {
		return
	}
	if m.pid != 0 {
		m.broker, m.err = processTimes(m.pid)
	}
	m.client, _ = processCPU(0)
	m.machine, _ = machineBusy()
	m.t0 = time.Now()
}

// end closes the phase, after the last operation has completed.
func (m *meter) end() {
	if m == nil {
		return
	}
	m.wall = time.Since(m.t0)
	time.Sleep(settle)
	if m.pid != 0 && m.err == nil {
		after, err := processTimes(m.pid)
		m.broker, m.err = after.sub(m.broker), err
	}
	after, _ := processCPU(0)
	m.client = after - m.client
	busy, _ := machineBusy()
	m.machine = busy - m.machine
}

// cpu is what a meter found, per operation.
type cpu struct {
	known          bool          // the broker's process was measured
	broker, client time.Duration // during the phase
	brokerSys      time.Duration // the kernel's part of broker (stime)
	machine        time.Duration // the whole machine's during the phase
	wall           time.Duration // of the phase, without the settling
	ops            int
}

func (m *meter) result(ops int) cpu {
	if m == nil {
		return cpu{}
	}
	return cpu{known: m.pid != 0 && m.err == nil, broker: m.broker.user + m.broker.sys, brokerSys: m.broker.sys,
		client: m.client, machine: m.machine, wall: m.wall, ops: ops}
}

// perOp is the broker's CPU per operation in µs.
func (c cpu) perOp() float64 { return us(c.broker) / float64(c.ops) }

// sysPerOp is the kernel's part of perOp (stime), in µs.
func (c cpu) sysPerOp() float64 { return us(c.brokerSys) / float64(c.ops) }

// clientPerOp is the load generator's CPU per operation in µs.
func (c cpu) clientPerOp() float64 { return us(c.client) / float64(c.ops) }

// cores is the broker's share of the machine during the phase, in cores.
func (c cpu) cores() float64 { return c.broker.Seconds() / c.wall.Seconds() }

// others is what every other process used during the phase (and the
// settling), in cores: what else ran on the machine besides the broker and
// the load generator.
func (c cpu) others() float64 {
	return max(0, c.machine-c.broker-c.client).Seconds() / (c.wall + settle).Seconds()
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
