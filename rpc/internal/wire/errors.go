package wire

import (
	"errors"
	"fmt"
)

// Errors, wrapped with details. Match them with errors.Is.
var (
	// ErrMalformed: bytes from the peer break the format. The error text
	// names the structure, the field and the bad value, for example
	// "wire: malformed MSG record: segment 3 length 12 is not a multiple of 8".
	ErrMalformed = errors.New("wire: malformed")
	// ErrVersion: the peer's HELLO carries a protocol version this side does
	// not speak. The error text names both versions.
	ErrVersion = errors.New("wire: unsupported protocol version")
	// ErrInvalid: an encoder was asked to write something the format cannot
	// express or a parser would reject (a caller's bug, not the peer's).
	ErrInvalid = errors.New("wire: cannot encode")
	// ErrShortBuffer: an encoder's destination buffer is too small.
	ErrShortBuffer = errors.New("wire: buffer too short")
)

// malformed returns an error wrapping ErrMalformed: "wire: malformed <what>: <detail>".
func malformed(what, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s", ErrMalformed, what, fmt.Sprintf(format, args...))
}

// invalid returns an error wrapping ErrInvalid: "wire: cannot encode <what>: <detail>".
func invalid(what, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s", ErrInvalid, what, fmt.Sprintf(format, args...))
}

// short returns an error wrapping ErrShortBuffer.
func short(what string, have, need int) error {
	return fmt.Errorf("%w for %s: %d bytes, need %d", ErrShortBuffer, what, have, need)
}
