package natsjs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// The JetStream requests the Store makes itself, on the default API prefix:
// reads through the stream leader, batched direct reads, publishes with
// expectations, and atomic batches, which the jetstream package does not
// offer.

const apiPrefix = "$JS.API"

// Headers.
const (
	hdrExpectedLastSubjSeq = "Nats-Expected-Last-Subject-Sequence"
	hdrRollup              = "Nats-Rollup"
	hdrTTL                 = "Nats-TTL"
	hdrBatchID             = "Nats-Batch-Id"
	hdrBatchSeq            = "Nats-Batch-Sequence"
	hdrBatchCommit         = "Nats-Batch-Commit"
	hdrSequence            = "Nats-Sequence"
	hdrSubject             = "Nats-Subject"
	hdrNumPending          = "Nats-Num-Pending"
	hdrStatus              = "Status"

	// hdrWrite names the write that stored a part: the Store's id and a
	// count. After a write whose outcome is unknown (a timeout), the
	// Store reads the session's log for it.
	hdrWrite = "Mqtthooks-Write"
	// hdrChunk is "i/n" on each of the n messages of a part too large for
	// one message; the parts of one write go in one atomic batch.
	hdrChunk = "Mqtthooks-Chunk"
)

// JetStream API error codes the Store acts on.
const (
	errCodeClusterNotAvail   = 10008
	errCodeNotLeader         = 10009
	errCodeNoMessage         = 10037
	errCodeWrongLastSeq      = 10071
	errCodeWrongLastSeqConst = 10164
	errCodeBatchIncomplete   = 10176
	errCodeBatchInflight     = 10210
)

// apiError is an error answer of the JetStream API.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("natsjs: JetStream: %s (%d)", e.Description, e.ErrCode)
}

// errUnknownOutcome wraps the error of a write whose outcome is unknown: it
// may have been stored.
type errUnknownOutcome struct{ err error }

func (e *errUnknownOutcome) Error() string {
	return "natsjs: write of unknown outcome: " + e.err.Error()
}
func (e *errUnknownOutcome) Unwrap() error { return e.err }

// errNotFound is the answer to a read of nothing.
var errNotFound = errors.New("natsjs: no message")

// conflict says whether err is a failed expectation: another writer wrote
// the subject first.
func conflict(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && (ae.ErrCode == errCodeWrongLastSeq || ae.ErrCode == errCodeWrongLastSeqConst)
}

// retryable says whether a request that failed with err may succeed if made
// again: a conflict, a cluster between leaders, a timeout.
func retryable(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.ErrCode {
		case errCodeWrongLastSeq, errCodeWrongLastSeqConst, errCodeClusterNotAvail, errCodeNotLeader,
			errCodeBatchIncomplete, errCodeBatchInflight:
			return true
		}
		return false
	}
	var uo *errUnknownOutcome
	return errors.As(err, &uo) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected)
}

// attemptTimeout bounds one request, so that one lost in a change of leader
// leaves time to try again.
const attemptTimeout = 2 * time.Second

// backoff waits before attempt n (from 0) again, or until ctx ends.
func backoff(ctx context.Context, n int) error {
	d := time.Millisecond << min(n, 8) // 1 ms … 256 ms
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rawMsg is a message read from the stream.
type rawMsg struct {
	subject string
	seq     uint64
	hdr     nats.Header
	data    []byte
}

// chunk returns the position of m in its part and the part's number of
// messages: 1, 1 for a part of one message.
func (m *rawMsg) chunk() (i, n int) {
	v := m.hdr.Get(hdrChunk)
	if v == "" {
		return 1, 1
	}
	a, b, ok := strings.Cut(v, "/")
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || i < 1 || i > n {
		return 0, 0
	}
	return i, n
}

type msgGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
	Batch   int    `json:"batch,omitempty"`
}

type msgGetResponse struct {
	Error   *apiError `json:"error,omitempty"`
	Message *struct {
		Subject string `json:"subject"`
		Seq     uint64 `json:"seq"`
		Header  []byte `json:"hdrs,omitempty"`
		Data    []byte `json:"data,omitempty"`
	} `json:"message,omitempty"`
}

// request makes a JetStream API request, again while the answer says to
// retry and ctx lasts, and decodes the answer into resp, whose error it
// returns.
func (s *Store) request(ctx context.Context, subject string, req []byte, resp interface{ apiErr() *apiError }) error {
	for n := 0; ; n++ {
		err := s.requestOnce(ctx, subject, req, resp)
		if err == nil || !retryable(err) || conflict(err) {
			return err
		}
		if berr := backoff(ctx, n); berr != nil {
			return err
		}
	}
}

func (s *Store) requestOnce(ctx context.Context, subject string, req []byte, resp interface{ apiErr() *apiError }) error {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	m, err := s.nc.RequestWithContext(actx, subject, req)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(m.Data, resp); err != nil {
		return fmt.Errorf("natsjs: JetStream answer to %s: %w", subject, err)
	}
	if ae := resp.apiErr(); ae != nil {
		return ae
	}
	return nil
}

func (r *msgGetResponse) apiErr() *apiError { return r.Error }

// leaderGet reads one message through the stream's leader, which has every
// message whose publish was acknowledged.
func (s *Store) leaderGet(ctx context.Context, req msgGetRequest) (*rawMsg, error) {
	body, _ := json.Marshal(req)
	var resp msgGetResponse
	err := s.request(ctx, apiPrefix+".STREAM.MSG.GET."+s.stream, body, &resp)
	var ae *apiError
	if errors.As(err, &ae) && ae.ErrCode == errCodeNoMessage {
		return nil, errNotFound
	}
	if err != nil {
		return nil, err
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("natsjs: JetStream answered a read without a message")
	}
	m := &rawMsg{subject: resp.Message.Subject, seq: resp.Message.Seq, data: resp.Message.Data}
	if len(resp.Message.Header) > 0 {
		if m.hdr, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return nil, fmt.Errorf("natsjs: JetStream message headers: %w", err)
		}
	}
	return m, nil
}

// directBatch is the size of one batched direct read.
const directBatch = 512

// directGet reads up to directBatch messages of filter from seq on, from
// any replica of the stream, and says how many more the replica has.
func (s *Store) directGet(ctx context.Context, filter string, seq uint64) (msgs []rawMsg, pending uint64, err error) {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	inbox := nats.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	body, _ := json.Marshal(msgGetRequest{Seq: seq, NextFor: filter, Batch: directBatch})
	if err := s.nc.PublishRequest(apiPrefix+".DIRECT.GET."+s.stream, inbox, body); err != nil {
		return nil, 0, err
	}
	for {
		m, err := sub.NextMsgWithContext(actx)
		if err != nil {
			return nil, 0, err
		}
		if len(m.Data) == 0 && m.Header.Get(hdrStatus) != "" {
			switch m.Header.Get(hdrStatus) {
			case "204": // the end of the batch
				pending, _ = strconv.ParseUint(m.Header.Get(hdrNumPending), 10, 64)
				return msgs, pending, nil
			case "404":
				return msgs, 0, nil
			case "503":
				return nil, 0, nats.ErrNoResponders
			default:
				return nil, 0, fmt.Errorf("natsjs: JetStream direct read: %s %s", m.Header.Get(hdrStatus), m.Header.Get("Description"))
			}
		}
		seq, err := strconv.ParseUint(m.Header.Get(hdrSequence), 10, 64)
		if err != nil {
			return nil, 0, fmt.Errorf("natsjs: JetStream direct read without a sequence")
		}
		msgs = append(msgs, rawMsg{subject: m.Header.Get(hdrSubject), seq: seq, hdr: m.Header, data: m.Data})
	}
}

// readRange reads every message of filter, in stream order, until it has
// read past the sequence last, which the caller found through the leader,
// and the replica it reads from has nothing more. A message removed while
// it reads (by a later rollup) may be missing; the rollup that removed it
// is not.
func (s *Store) readRange(ctx context.Context, filter string, last uint64) ([]rawMsg, error) {
	var out []rawMsg
	next := uint64(0)
	for n := 0; ; {
		msgs, pending, err := s.directGet(ctx, filter, next)
		if err != nil {
			if !retryable(err) || ctx.Err() != nil {
				return nil, err
			}
			if berr := backoff(ctx, n); berr != nil {
				return nil, err
			}
			n++
			continue
		}
		out = append(out, msgs...)
		if len(msgs) > 0 {
			next = msgs[len(msgs)-1].seq + 1
		}
		if pending > 0 && len(msgs) > 0 {
			continue
		}
		if next > last {
			return out, nil
		}
		// The replica lags behind the leader: read the next message
		// through the leader.
		m, err := s.leaderGet(ctx, msgGetRequest{Seq: next, NextFor: filter})
		if errors.Is(err, errNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *m)
		next = m.seq + 1
	}
}

type pubAckResponse struct {
	Error *apiError `json:"error,omitempty"`
	Seq   uint64    `json:"seq"`
	Count int       `json:"count,omitempty"`
}

func (r *pubAckResponse) apiErr() *apiError { return r.Error }

// publish stores msgs, one message or an atomic batch, and returns the
// stream sequence of each. A timeout is an errUnknownOutcome.
func (s *Store) publish(ctx context.Context, msgs []*nats.Msg) ([]uint64, error) {
	last := msgs[len(msgs)-1]
	if len(msgs) > 1 {
		if !s.atomic {
			return nil, ErrAtomicPublishUnsupported
		}
		id := nuid.Next()
		for i, m := range msgs {
			m.Header.Set(hdrBatchID, id)
			m.Header.Set(hdrBatchSeq, strconv.Itoa(i+1))
		}
		last.Header.Set(hdrBatchCommit, "1")
		for _, m := range msgs[:len(msgs)-1] {
			if err := s.nc.PublishMsg(m); err != nil {
				return nil, err
			}
		}
	}
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	reply, err := s.nc.RequestMsgWithContext(actx, last)
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConnectionClosed) {
		return nil, err // not stored
	}
	if err != nil {
		return nil, &errUnknownOutcome{err}
	}
	var ack pubAckResponse
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return nil, &errUnknownOutcome{fmt.Errorf("natsjs: JetStream publish answer: %w", err)}
	}
	if ack.Error != nil {
		return nil, ack.Error
	}
	if len(msgs) > 1 && ack.Count != len(msgs) {
		return nil, &errUnknownOutcome{fmt.Errorf("natsjs: JetStream stored a batch of %d messages as %d", len(msgs), ack.Count)}
	}
	seqs := make([]uint64, len(msgs))
	for i := range msgs {
		seqs[i] = ack.Seq - uint64(len(msgs)-1-i)
	}
	return seqs, nil
}
