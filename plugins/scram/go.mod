module github.com/mqtthooks/mqtthooks/plugins/scram

go 1.24

require (
	github.com/mqtthooks/mqtthooks v0.0.0-00010101000000-000000000000
	github.com/stretchr/testify v1.12.1
	github.com/xdg-go/scram v1.4.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/xdg-go/stringprep v1.0.4 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/text v0.3.8 // indirect
)

replace github.com/mqtthooks/mqtthooks => ../..
