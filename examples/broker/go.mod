module github.com/mqtthooks/mqtthooks/examples/broker

go 1.26.0

require (
	github.com/eclipse/paho.golang v0.23.0
	github.com/eclipse/paho.mqtt.golang v1.5.1
	github.com/mochi-mqtt/server/v2 v2.7.9
	github.com/mqtthooks/mqtthooks v0.0.0-00010101000000-000000000000
	github.com/mqtthooks/mqtthooks/adapters/mochi v0.0.0-00010101000000-000000000000
	github.com/mqtthooks/mqtthooks/plugins/passwd v0.0.0-00010101000000-000000000000
	github.com/mqtthooks/mqtthooks/plugins/scram v0.0.0-00010101000000-000000000000
	github.com/stretchr/testify v1.12.1
	github.com/xdg-go/scram v1.4.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/rs/xid v1.4.0 // indirect
	github.com/xdg-go/stringprep v1.0.4 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
)

replace github.com/mqtthooks/mqtthooks => ../..

replace (
	github.com/mqtthooks/mqtthooks/adapters/mochi => ../../adapters/mochi
	github.com/mqtthooks/mqtthooks/plugins/passwd => ../../plugins/passwd
	github.com/mqtthooks/mqtthooks/plugins/scram => ../../plugins/scram
)
