module github.com/mqtthooks/mqtthooks

go 1.23
