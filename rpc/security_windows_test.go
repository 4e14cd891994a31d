package rpc_test

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/rpc"
)

// TestWinPipeSecurityDescriptor: a listener's pipe grants this user full
// access and nobody else anything (Windows' default DACL grants read to
// Everyone and to anonymous logons); with WithAllowOtherUsers it also lets
// authenticated local users read and write it, but not create instances
// of it.
func TestWinPipeSecurityDescriptor(t *testing.T) {
	me := currentSID(t)
	for _, others := range []bool{false, true} {
		var opts []rpc.Option
		if others {
			opts = append(opts, rpc.WithAllowOtherUsers())
		}
		name := strings.TrimPrefix(winAddr(rpc.SchemePipe), "pipe:")
		l, err := rpc.ListenPipe(name, opts...)
		if err != nil {
			t.Fatal(err)
		}
		c, err := rpc.DialPipe(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		sd, err := windows.GetSecurityInfo(windows.Handle(rpc.PipeHandle(c)), windows.SE_KERNEL_OBJECT, windows.DACL_SECURITY_INFORMATION)
		c.Close()
		l.Close()
		if err != nil {
			t.Fatalf("reading the pipe's DACL: %v", err)
		}
		s := sd.String()
		t.Logf("others=%v: %s", others, s)
		if !strings.Contains(s, me) {
			t.Errorf("others=%v: the DACL %s does not name this user %s", others, s, me)
		}
		for _, who := range []string{";WD)", ";AN)", ";BU)"} {
			if strings.Contains(s, who) {
				t.Errorf("others=%v: the DACL %s grants %s", others, s, strings.Trim(who, ";)"))
			}
		}
		if others != strings.Contains(s, ";AU)") {
			t.Errorf("others=%v: the DACL %s, want authenticated users only with WithAllowOtherUsers", others, s)
		}
	}
}

// TestWinPipeDACLEnforced: a token without this user (its SID made
// deny-only) cannot connect to a listener's pipe, nor create an instance
// of it; with WithAllowOtherUsers it can connect, and still not create an
// instance. Wine keeps the DACL but does not check it, so this runs on
// Windows only.
func TestWinPipeDACLEnforced(t *testing.T) {
	if handles.IsWine() {
		t.Skip("Wine stores a pipe's DACL but does not enforce it: needs real Windows")
	}
	for _, others := range []bool{false, true} {
		var opts []rpc.Option
		if others {
			opts = append(opts, rpc.WithAllowOtherUsers())
		}
		name := strings.TrimPrefix(winAddr(rpc.SchemePipe), "pipe:")
		l, err := rpc.ListenPipe(name, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var dialErr, createErr error
		asStranger(t, func() {
			path, _ := windows.UTF16PtrFromString(`\\.\pipe\` + name)
			h, err := windows.CreateFile(path, windows.FILE_GENERIC_READ|windows.FILE_WRITE_DATA, 0, nil, windows.OPEN_EXISTING, 0, 0)
			if err == nil {
				windows.CloseHandle(h)
			}
			dialErr = err
			h, err = windows.CreateNamedPipe(path, windows.PIPE_ACCESS_DUPLEX, windows.PIPE_TYPE_BYTE, windows.PIPE_UNLIMITED_INSTANCES, 4096, 4096, 0, nil)
			if err == nil {
				windows.CloseHandle(h)
			}
			createErr = err
		})
		if others && dialErr != nil {
			t.Errorf("others=true: another user could not connect: %v", dialErr)
		}
		if !others && !errors.Is(dialErr, windows.ERROR_ACCESS_DENIED) {
			t.Errorf("others=false: another user's connect: %v, want ERROR_ACCESS_DENIED", dialErr)
		}
		if !errors.Is(createErr, windows.ERROR_ACCESS_DENIED) {
			t.Errorf("others=%v: another user's instance of the pipe: %v, want ERROR_ACCESS_DENIED", others, createErr)
		}
	}
}

// TestWinFirstInstance: a name another process already has a pipe
// instance of (a squatter that would read what clients send) is refused
// to Listen with ErrAddrInUse: the listener's first instance is made with
// FILE_FLAG_FIRST_PIPE_INSTANCE. Wine lets that flag through on an
// existing name, so this runs on Windows only.
func TestWinFirstInstance(t *testing.T) {
	if handles.IsWine() {
		t.Skip("Wine creates a pipe with FILE_FLAG_FIRST_PIPE_INSTANCE on a name that exists: needs real Windows")
	}
	addr := winAddr(rpc.SchemeShm)
	path, _ := windows.UTF16PtrFromString(`\\.\pipe\` + strings.TrimPrefix(addr, "shm:"))
	squat, err := windows.CreateNamedPipe(path, windows.PIPE_ACCESS_DUPLEX, windows.PIPE_TYPE_BYTE, windows.PIPE_UNLIMITED_INSTANCES, 4096, 4096, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer windows.CloseHandle(squat)
	srv, err := rpc.Listen(addr, capnp.Client{})
	if err == nil {
		srv.Close()
		t.Fatal("Listen succeeded on a name a squatter holds")
	}
	if !errors.Is(err, rpc.ErrAddrInUse) {
		t.Fatalf("Listen on a squatted name: %v, want ErrAddrInUse", err)
	}
	t.Logf("%v", err)
}

// currentSID returns this process's user SID as a string.
func currentSID(t *testing.T) string {
	t.Helper()
	u, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		t.Fatal(err)
	}
	return u.User.Sid.String()
}

var procCreateRestrictedToken = windows.NewLazySystemDLL("advapi32.dll").NewProc("CreateRestrictedToken")

// asStranger runs fn on a thread impersonating this process's token with
// its user SID made deny-only: to the pipe's DACL, another user.
func asStranger(t *testing.T, fn func()) {
	t.Helper()
	u, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		t.Fatal(err)
	}
	var proc windows.Token
	if err := windows.OpenProcessToken(windows.CurrentProcess(), windows.TOKEN_DUPLICATE|windows.TOKEN_QUERY|windows.TOKEN_IMPERSONATE, &proc); err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	disable := windows.SIDAndAttributes{Sid: u.User.Sid}
	var restricted windows.Token
	r, _, err := procCreateRestrictedToken.Call(uintptr(proc), 0, 1, uintptr(unsafe.Pointer(&disable)), 0, 0, 0, 0, uintptr(unsafe.Pointer(&restricted)))
	if r == 0 {
		t.Fatalf("CreateRestrictedToken: %v", err)
	}
	defer restricted.Close()
	var imp windows.Token
	if err := windows.DuplicateTokenEx(restricted, windows.TOKEN_IMPERSONATE|windows.TOKEN_QUERY, nil, windows.SecurityImpersonation, windows.TokenImpersonation, &imp); err != nil {
		t.Fatal(err)
	}
	defer imp.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, token and all
		if err := windows.SetThreadToken(nil, imp); err != nil {
			t.Errorf("SetThreadToken: %v", err)
			return
		}
		fn()
	}()
	<-done
}
