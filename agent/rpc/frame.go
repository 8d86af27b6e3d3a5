package rpc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// errTooLarge is returned when one request outgrows its byte budget.
var errTooLarge = errors.New("request exceeds the size limit")

// maxNesting bounds how deeply arrays and maps may nest in one value. Our
// wire types nest four deep; the bound keeps a hostile value from costing
// stack or time in the decoder.
const maxNesting = 64

// budgetReader counts what one request consumes and refuses to read past
// its budget, so an oversize or endless request costs at most the budget.
type budgetReader struct {
	r    *bufio.Reader
	left int
	used int
}

func newBudgetReader(r io.Reader) *budgetReader {
	return &budgetReader{r: bufio.NewReader(r)}
}

// reset starts a new request with n bytes to spend.
func (b *budgetReader) reset(n int) {
	b.left, b.used = n, 0
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errTooLarge
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= n
	b.used += n
	return n, err
}

func (b *budgetReader) ReadByte() (byte, error) {
	if b.left <= 0 {
		return 0, errTooLarge
	}
	c, err := b.r.ReadByte()
	if err == nil {
		b.left--
		b.used++
	}
	return c, err
}

// readValue reads exactly one msgpack value, whole, and returns its bytes.
// It walks the value iteratively with an explicit stack: the values it
// returns are complete and declare no more elements than they hold, which is
// what makes decoding them with msgpack.Unmarshal safe (msgpack/v5 sizes
// slices from the declared length). An EOF before the first byte is io.EOF;
// inside the value it is io.ErrUnexpectedEOF.
func readValue(r *budgetReader) ([]byte, error) {
	var out bytes.Buffer
	pending := []uint64{1} // values still to read, per nesting level
	first := true
	for len(pending) > 0 {
		top := len(pending) - 1
		if pending[top] == 0 {
			pending = pending[:top]
			continue
		}
		pending[top]--

		c, err := r.ReadByte()
		if err != nil {
			if first && err == io.EOF {
				return nil, io.EOF
			}
			return nil, unexpected(err)
		}
		first = false
		out.WriteByte(c)

		var data uint64 // payload bytes that follow
		var children uint64
		switch {
		case c <= 0x7f || c >= 0xe0: // fixint
		case c <= 0x8f: // fixmap
			children = 2 * uint64(c&0x0f)
		case c <= 0x9f: // fixarray
			children = uint64(c & 0x0f)
		case c <= 0xbf: // fixstr
			data = uint64(c & 0x1f)
		default:
			switch c {
			case 0xc0, 0xc2, 0xc3: // nil, false, true
			case 0xc4, 0xd9: // bin8, str8
				data, err = readLen(r, &out, 1)
			case 0xc5, 0xda: // bin16, str16
				data, err = readLen(r, &out, 2)
			case 0xc6, 0xdb: // bin32, str32
				data, err = readLen(r, &out, 4)
			case 0xc7: // ext8: length, then type
				data, err = readLen(r, &out, 1)
				data++
			case 0xc8: // ext16
				data, err = readLen(r, &out, 2)
				data++
			case 0xc9: // ext32
				data, err = readLen(r, &out, 4)
				data++
			case 0xca, 0xce, 0xd2: // float32, uint32, int32
				data = 4
			case 0xcb, 0xcf, 0xd3: // float64, uint64, int64
				data = 8
			case 0xcc, 0xd0: // uint8, int8
				data = 1
			case 0xcd, 0xd1: // uint16, int16
				data = 2
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 plus type
				data = 1 + 1<<(c-0xd4)
			case 0xdc: // array16
				children, err = readLen(r, &out, 2)
			case 0xdd: // array32
				children, err = readLen(r, &out, 4)
			case 0xde: // map16
				children, err = readLen(r, &out, 2)
				children *= 2
			case 0xdf: // map32
				children, err = readLen(r, &out, 4)
				children *= 2
			default: // 0xc1 is never used
				return nil, fmt.Errorf("invalid msgpack code 0x%02x", c)
			}
			if err != nil {
				return nil, unexpected(err)
			}
		}
		if data > 0 {
			// A length past what the request may still spend can never be
			// read: refuse it now rather than wait for bytes that would be
			// refused anyway (and hold the connection meanwhile).
			if data > uint64(r.left) {
				return nil, errTooLarge
			}
			// Copy grows the buffer as bytes arrive, so a declared length
			// costs nothing until the bytes are really there.
			if _, err := io.CopyN(&out, r, int64(data)); err != nil {
				return nil, unexpected(err)
			}
		}
		if children > 0 {
			if len(pending) >= maxNesting {
				return nil, fmt.Errorf("msgpack value nests deeper than %d", maxNesting)
			}
			pending = append(pending, children)
		}
	}
	return out.Bytes(), nil
}

// readLen reads a big-endian length of size bytes and keeps it in out.
func readLen(r io.Reader, out *bytes.Buffer, size int) (uint64, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:size]); err != nil {
		return 0, err
	}
	out.Write(b[:size])
	switch size {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(b[:2])), nil
	default:
		return uint64(binary.BigEndian.Uint32(b[:4])), nil
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
