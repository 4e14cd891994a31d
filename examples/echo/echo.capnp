# A small public schema for capnshm's README and examples: what a program
# of your own would define. Its generated Go code is package echo.
@0xcfbcd1bfe45e4bc6;

using Go = import "/go.capnp";
$Go.package("echo");
$Go.import("github.com/capnshm/capnshm/examples/echo");

interface Echo {
  ping @0 () -> ();
  # The smallest call.

  echo @1 (data :Data) -> (data :Data);
  # Returns data.

  sum @2 (data :Data) -> (sum :UInt64, length :UInt64);
  # Reads every byte of data: the sum of the bytes and their count.
}
