// Package handles holds the operating-system handle helpers that several
// packages of capnshm need, in one place:
//
//	Linux                                  Windows
//	ParseRights  SCM_RIGHTS control data   TypeName      NtQueryObject's type name
//	CloseFDs     close descriptors         CloseAll      close handles
//	                                       DuplicateTo   push a handle into a process
//	                                       DuplicateFrom pull a handle out of one
//	                                       CloseIn       close a handle in a process
//	                                       OnSignal      a call when a handle is signalled
//	                                       Count         this process's handle count
//	                                       Census        its handles by type (tests)
//	                                       GrantedAccess a handle's access rights
//	                                       IsWine        running under Wine?
//
// Nothing here keeps state except OnSignal's table of watches (one mutex,
// a leaf, never held while a watch's function runs) and IsWine's answer.
package handles
