package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/plugins/scram"
)

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	assert.ErrorIs(t, run([]string{"-help"}, nil, &out), flag.ErrHelp)
	for _, name := range []string{"-addr", "-tls-cert", "-tls-key", "-passwd", "-scram", "-allow-anonymous", "-max-packet-size", "-v",
		"-connect-timeout", "-auth-timeout", "-passwd-tell-wrong-password", "-max-connect-size", "-max-connecting",
		"-topic-alias-maximum", "-sys-interval", "-metrics-addr", "-webhook", "-webhook-timeout", "-webhook-ca", "-webhook-cert", "-webhook-key"} {
		assert.Contains(t, out.String(), name)
	}
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))

	_, err := build(&flags{addr: "0.0.0.0:1883"}, discard)
	assert.ErrorContains(t, err, "refusing to start without an auth plugin", "no auth on a public address")
	b, err := build(&flags{addr: "0.0.0.0:1883", allowAnonymous: true, allowAnonymousSet: true}, discard)
	require.NoError(t, err)
	assert.True(t, b.srv.cfg.allowAnonymous)
	b, err = build(&flags{addr: "127.0.0.1:1883"}, discard)
	require.NoError(t, err)
	assert.True(t, b.srv.cfg.allowAnonymous, "anonymous by default on loopback without auth")
	b, err = build(&flags{addr: "127.0.0.1:1883", passwd: "../../plugins/passwd/testdata/mosquitto.passwd"}, discard)
	require.NoError(t, err)
	assert.False(t, b.srv.cfg.allowAnonymous, "not with an auth plugin")
	_, err = build(&flags{addr: "127.0.0.1:1883", tlsCert: "x.pem"}, discard)
	assert.ErrorContains(t, err, "go together")
	assert.Error(t, run([]string{"stray"}, nil, io.Discard))

	// An unauthenticated client gets as long to finish an enhanced-auth
	// exchange as to send its CONNECT, by default and as set.
	f, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 10*time.Second, f.connectTimeout)
	assert.Equal(t, f.connectTimeout, f.authTimeout)
	f, err = parseFlags([]string{"-connect-timeout", "3s", "-auth-timeout", "4s"}, io.Discard)
	require.NoError(t, err)
	b, err = build(f, discard)
	require.NoError(t, err)
	assert.Equal(t, 3*time.Second, b.srv.cfg.connectTimeout)
	assert.Equal(t, 4*time.Second, b.srv.cfg.authTimeout)
	_, err = parseFlags([]string{"-auth-timeout", "0s"}, io.Discard)
	assert.ErrorContains(t, err, "must be positive")
}

func TestSCRAMAddUser(t *testing.T) {
	file := filepath.Join(t.TempDir(), "scram.txt")
	require.NoError(t, run([]string{"-scram", file, "-scram-adduser", "alice"}, strings.NewReader("wonderland\n"), io.Discard))
	require.NoError(t, run([]string{"-scram", file, "-scram-adduser", "bob"}, strings.NewReader("builder"), io.Discard))
	store, err := scram.LoadFile(file)
	require.NoError(t, err)
	c, err := store.Lookup(context.Background(), "bob")
	require.NoError(t, err)
	assert.Equal(t, scram.DefaultIterations, c.Iterations)
	assert.Error(t, run([]string{"-scram-adduser", "x"}, strings.NewReader("p"), io.Discard), "needs -scram")
	assert.Error(t, run([]string{"-scram", file, "-scram-adduser", "a:b"}, strings.NewReader("p"), io.Discard))
	data, _ := os.ReadFile(file)
	assert.NotContains(t, string(data), "wonderland", "no password is stored")
}

// selfSigned writes a self-signed certificate and key for 127.0.0.1.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "broker"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile
}

// With -tls-cert and -tls-key the listener speaks TLS, and hooks see it in
// ConnInfo.
func TestTLS(t *testing.T) {
	cert, key := selfSigned(t)
	b := startBroker(t, flags{tlsCert: cert, tlsKey: key})
	nc, err := tls.Dial("tcp", b.addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a test's own certificate
	require.NoError(t, err)
	c := paho.NewClient(paho.ClientConfig{Conn: nc, OnClientError: func(error) {}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: "secure", CleanStart: true, KeepAlive: 30})
	require.NoError(t, err)
	assert.Equal(t, byte(0), ack.ReasonCode)
	defer c.Disconnect(&paho.Disconnect{})
	auth, ok := b.rec.Last(mqtthooks.SubscriberID{ClientID: "secure"}, "AuthOnRegisterM5")
	require.True(t, ok)
	assert.Equal(t, "tls", auth.Register.Conn.Transport)
	require.NotNil(t, auth.Register.Conn.TLS)
	assert.True(t, auth.Register.Conn.TLS.HandshakeComplete)
	assert.Equal(t, listenerName, auth.Register.Conn.Listener)
}
