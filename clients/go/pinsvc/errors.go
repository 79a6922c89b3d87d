package pinsvc

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call to an agent. It keeps the gRPC status code, so both
// errors.As(err, &*Error) and status.Code(err) see it.
type Error struct {
	Op      string     // the RPC, e.g. "Apply"
	Code    codes.Code // e.g. codes.InvalidArgument
	Message string     // the agent's message, naming the bad value
	status  *status.Status
}

func (e *Error) Error() string {
	return fmt.Sprintf("pinsvc %s: %s: %s", e.Op, e.Code, e.Message)
}

// GRPCStatus makes status.FromError and status.Code return the agent's status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Code is the gRPC code of err: the agent's code for an *Error or a gRPC status error,
// codes.OK for nil and codes.Unknown for anything else.
func Code(err error) codes.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// wrap converts an error of a gRPC call into an *Error, once, at the call.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	s, _ := status.FromError(err)
	return &Error{Op: op, Code: s.Code(), Message: s.Message(), status: s}
}
