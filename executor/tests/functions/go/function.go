package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

var counter int

type CustomError struct{ msg string }

func (e *CustomError) Error() string { return e.msg }

type event struct {
	Action  string          `json:"action"`
	Data    json.RawMessage `json:"data"`
	Seconds float64         `json:"seconds"`
	Mb      int             `json:"mb"`
	Names   []string        `json:"names"`
	Ms      int64           `json:"ms"`
}

var sink [][]byte

func Handle(ctx context.Context, raw json.RawMessage) (any, error) {
	var ev event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, err
	}
	switch ev.Action {
	case "echo":
		return ev.Data, nil
	case "context":
		fields, _ := ctx.Value("kubefaas.context").(map[string]any)
		deadline, _ := ctx.Deadline()
		first := time.Until(deadline).Milliseconds()
		time.Sleep(50 * time.Millisecond)
		return map[string]any{
			"function_name":      fields["function_name"],
			"function_version":   fields["function_version"],
			"memory_limit_in_mb": fields["memory_limit_in_mb"],
			"aws_request_id":     fields["aws_request_id"],
			"invocation_id":      fields["invocation_id"],
			"remaining_ms":       []int64{first, time.Until(deadline).Milliseconds()},
		}, nil
	case "fail":
		return nil, &CustomError{"boom"}
	case "sleep":
		time.Sleep(time.Duration(ev.Seconds * float64(time.Second)))
		return "slept", nil
	case "hog":
		for i := 0; i < ev.Mb; i++ {
			block := make([]byte, 1<<20)
			for j := range block {
				block[j] = 1
			}
			sink = append(sink, block)
		}
		return len(sink), nil
	case "log":
		fmt.Println("to-stdout")
		fmt.Fprintln(os.Stderr, "to-stderr")
		return "logged", nil
	case "env":
		values := map[string]any{}
		for _, name := range ev.Names {
			if v, ok := os.LookupEnv(name); ok {
				values[name] = v
			} else {
				values[name] = nil
			}
		}
		return values, nil
	case "counter":
		counter++
		return counter, nil
	case "crash":
		go func() { panic("crash in a goroutine") }()
		time.Sleep(10 * time.Second)
		return nil, nil
	case "unserializable":
		return make(chan int), nil
	case "spin":
		end := time.Now().Add(time.Duration(ev.Ms) * time.Millisecond)
		n := 0
		for time.Now().Before(end) {
			n++
		}
		return n, nil
	}
	return nil, errors.New("unknown action " + ev.Action)
}
