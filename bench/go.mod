module github.com/mqtthooks/mqtthooks/bench

go 1.26.0

require (
	github.com/mochi-mqtt/server/v2 v2.7.9
	github.com/mqtthooks/mqtthooks v0.0.0-00010101000000-000000000000
	github.com/mqtthooks/mqtthooks/plugins/passwd v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
)

require (
	github.com/gorilla/websocket v1.5.0 // indirect
	github.com/rs/xid v1.4.0 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)

replace github.com/mqtthooks/mqtthooks => ..

replace github.com/mqtthooks/mqtthooks/plugins/passwd => ../plugins/passwd
