# The test and benchmark protocol of capnshm: what the transport conformance
# suite, the benchmarks and the bench/ program call across processes.
@0xa06fa95ce5be4ed0;

using Go = import "/go.capnp";
$Go.package("echoproto");
$Go.import("github.com/capnshm/capnshm/internal/echoproto");

interface Echo {
  ping @0 () -> ();
  # The smallest call: measures a round trip.

  echo @1 (data :Data) -> (data :Data);
  # Returns data unchanged (the server copies it into its results).

  sum @2 (data :Data) -> (sum :UInt64, length :UInt64);
  # Reads every byte of data; the client built it in place.

  fill @3 (size :UInt64, seed :UInt8) -> (data :Data);
  # Results of size bytes written in place by the server: byte i is
  # (seed + i*7) mod 256.

  push @4 (data :Data) -> stream;
  # A streaming call; the server counts what it received.

  pushed @5 () -> (bytes :UInt64, count :UInt64);
  # What push has received so far.

  fail @6 (reason :Text) -> ();
  # Fails with reason as the error message.

  block @7 () -> ();
  # Returns only when the call is cancelled (or the connection ends).

  counter @8 (start :Int64) -> (counter :Counter);
  # A new capability, for pipelining and embargo tests.

  callBack @9 (callback :Callback, value :Int64) -> (result :Int64);
  # Calls the client's capability and returns its answer plus one.

  sumChunks @10 (chunks :List(Data)) -> (sum :UInt64, length :UInt64);
  # sum for messages over 512 MiB: a Data holds less than 2^29 bytes.

  fillChunks @11 (chunkSize :UInt64, count :UInt32, seed :UInt8) -> (chunks :List(Data));
  # fill for results over 512 MiB: count chunks, each filled as fill
  # fills (byte i of the whole is (seed + i*7) mod 256).

  liveObjects @12 () -> (count :Int64);
  # How many capabilities this server made (counters from counter and
  # self) are still alive, i.e. not yet released by every holder: the
  # test that received capabilities are released.

  reflect @13 (callback :Callback) -> (callback :Callback);
  # Returns the capability it was given: calls pipelined on the result
  # reach the caller's own object through this server (a tail call).

  open @14 (name :Text) -> (session :Session);
  # A session named name: for pipelining two levels deep.

  add @15 (counter :Counter, delta :Int64) -> (value :Int64);
  # Adds delta to the counter it was given and returns its value.

  promise @16 (start :Int64) -> (counter :Counter);
  # A promise of a new counter, resolved by the next resolvePromises: the
  # server exports a promise, then sends Resolve.

  resolvePromises @17 () -> (resolved :UInt32);
  # Resolves every promise made by promise so far.

  gate @18 (start :Int64) -> (counter :Counter);
  # A new counter, returned only once openGate is called (or the call is
  # cancelled): for messages that must reach the server before a Return.

  openGate @19 () -> ();
  # Lets every waiting gate call return.
}

interface Session {
  name @0 () -> (name :Text);
  sub @1 () -> (session :Session);
  # A session named this one's name plus "/sub".
}

interface Counter {
  add @0 (delta :Int64) -> (value :Int64);
  get @1 () -> (value :Int64);
  self @2 () -> (counter :Counter);
  # Returns this same counter (resolving a promise to a local capability
  # exercises embargoes).
}

interface Callback {
  call @0 (value :Int64) -> (result :Int64);
  echoData @1 (data :Data) -> (data :Data);
  # Returns its data: a call with large params and results to forward.
}
