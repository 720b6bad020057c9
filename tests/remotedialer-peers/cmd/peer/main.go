// Command peer drives the upstream remotedialer module for the Rust crate's tests.
//
//	peer vectors                  print frames that the upstream code itself encoded, as JSON lines
//	peer upload -listen ADDR      run an upstream remotedialer.Server with an endpoint that pushes
//	                              bytes *into* a client's stream (the direction the stock server
//	                              program cannot exercise with GETs)
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rancher/remotedialer"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peer vectors | peer upload -listen ADDR")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "vectors":
		err = vectors()
	case "upload":
		err = upload(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
}

func tunnelID(req *http.Request) (string, bool, error) {
	id := req.Header.Get("x-tunnel-id")
	return id, id != "", nil
}

// vector is one captured frame plus what the upstream code meant to put in it.
type vector struct {
	Name       string `json:"name"`
	Hex        string `json:"hex"`
	ConnID     int64  `json:"conn_id"`
	Type       int64  `json:"type"`
	PayloadHex string `json:"payload_hex"`
	// PayloadIsPrefix: the payload holds a random session key, so only its start is fixed.
	PayloadIsPrefix bool `json:"payload_is_prefix"`
}

// vectors runs an upstream Server, attaches a raw websocket as its client, makes the server
// emit each message type and prints the frames exactly as they arrived.
func vectors() error {
	server := remotedialer.New(tunnelID, remotedialer.DefaultErrorWriter)
	httpServer := httptest.NewServer(server)
	defer httpServer.Close()

	url := "ws" + strings.TrimPrefix(httpServer.URL, "http")
	ws, _, err := websocket.DefaultDialer.Dial(url, http.Header{"X-Tunnel-Id": {"vectors"}})
	if err != nil {
		return err
	}
	defer ws.Close()
	for !server.HasSession("vectors") {
		time.Sleep(10 * time.Millisecond)
	}

	out := json.NewEncoder(os.Stdout)
	next := func(name string, wantType int64, wantConn int64, payload []byte) ([]byte, error) {
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		kind, frame, err := ws.ReadMessage()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if kind != websocket.BinaryMessage {
			return nil, fmt.Errorf("%s: message kind %d", name, kind)
		}
		return frame, out.Encode(vector{name, hex.EncodeToString(frame), wantConn, wantType, hex.EncodeToString(payload), false})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := server.Dialer("vectors")(ctx, "tcp", "127.0.0.1:6443")
	if err != nil {
		return err
	}
	if _, err := next("server_connect", 2, 2, []byte("tcp/127.0.0.1:6443")); err != nil {
		return err
	}
	long := strings.Repeat("a", 250) + ".example:443"
	conn2, err := server.Dialer("vectors")(ctx, "tcp", long)
	if err != nil {
		return err
	}
	if _, err := next("server_connect_long_address", 2, 3, []byte("tcp/"+long)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("GET /ping HTTP/1.1\r\nHost: not-used\r\n\r\n")); err != nil {
		return err
	}
	dataFrame, err := next("server_data", 1, 2, []byte("GET /ping HTTP/1.1\r\nHost: not-used\r\n\r\n"))
	if err != nil {
		return err
	}
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	if _, err := conn2.Write(binary); err != nil {
		return err
	}
	if _, err := next("server_data_binary", 1, 3, binary); err != nil {
		return err
	}

	// Push more than the server's 2 MiB read buffer into conn 2 without reading it: the
	// server answers with Pause. The Data header is the server's own, reused verbatim.
	header := dataFrame[:len(dataFrame)-len("GET /ping HTTP/1.1\r\nHost: not-used\r\n\r\n")]
	chunk := append(append([]byte{}, header...), make([]byte, 1<<20)...)
	for i := 0; i < 3; i++ {
		if err := ws.WriteMessage(websocket.BinaryMessage, chunk); err != nil {
			return err
		}
	}
	if _, err := next("server_pause", 6, 2, nil); err != nil {
		return err
	}
	if _, err := io.ReadFull(conn, make([]byte, 3<<20)); err != nil {
		return err
	}
	if _, err := next("server_resume", 7, 2, nil); err != nil {
		return err
	}
	conn.Close()
	if _, err := next("server_error_eof", 3, 2, []byte("EOF")); err != nil {
		return err
	}
	// Data for a connection the server does not know.
	unknown := append([]byte{}, header...)
	unknown[len(unknown)-5] = 0x62 // connID varint byte: 2 -> 49 (zig-zag 0x62)
	if unknown[len(unknown)-5] != 0x62 || header[len(header)-5] != 0x04 {
		return fmt.Errorf("unexpected data header layout %x", header)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, unknown); err != nil {
		return err
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, frame, err := ws.ReadMessage()
	if err != nil {
		return err
	}
	return out.Encode(vector{"server_error_not_found", hex.EncodeToString(frame), 49, 3, hex.EncodeToString([]byte("connection not found vectors/")), true})
}

// pattern is the byte stream pushed by upload: byte i is i*7+i/4099 mod 256.
func pattern(offset, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		j := offset + i
		out[i] = byte(j*7 + j/4099)
	}
	return out
}

// upload: GET /upload/{id}/{host}?size=N dials host through client id's tunnel, writes N
// pattern bytes, then reads the 64-hex-char SHA-256 the far end computed. It answers
// "<sha256 sent> <sha256 reported>".
func upload(args []string) error {
	flags := flag.NewFlagSet("upload", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:0", "listen address")
	flags.Parse(args)

	server := remotedialer.New(tunnelID, remotedialer.DefaultErrorWriter)
	mux := http.NewServeMux()
	mux.Handle("/connect", server)
	mux.HandleFunc("/upload/{id}/{host}", func(rw http.ResponseWriter, req *http.Request) {
		size, err := strconv.Atoi(req.URL.Query().Get("size"))
		if err != nil {
			http.Error(rw, err.Error(), 400)
			return
		}
		ctx, cancel := context.WithTimeout(req.Context(), 10*time.Minute)
		defer cancel()
		conn, err := server.Dialer(req.PathValue("id"))(ctx, "tcp", req.PathValue("host"))
		if err != nil {
			http.Error(rw, err.Error(), 502)
			return
		}
		defer conn.Close()
		hash := sha256.New()
		written := make(chan error, 1)
		go func() {
			for offset := 0; offset < size; offset += 32 << 10 {
				block := pattern(offset, min(32<<10, size-offset))
				hash.Write(block)
				if _, err := conn.Write(block); err != nil {
					written <- err
					return
				}
			}
			written <- nil
		}()
		reported := make([]byte, 64)
		_, readErr := io.ReadFull(conn, reported)
		if err := <-written; err != nil {
			http.Error(rw, "write: "+err.Error(), 502)
			return
		}
		if readErr != nil {
			http.Error(rw, "read: "+readErr.Error(), 502)
			return
		}
		fmt.Fprintf(rw, "%s %s", hex.EncodeToString(hash.Sum(nil)), reported)
	})
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// The test reads the chosen port from this line.
	fmt.Println("listening on", listener.Addr())
	return http.Serve(listener, mux)
}
