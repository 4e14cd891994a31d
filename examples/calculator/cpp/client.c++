// A C++ EZ-RPC client of the calculator, after the Cap'n Proto sample
// (capnproto/c++/samples/calculator-client.c++), built from the same
// schema as the Go server (../calculator/calculator.capnp) by build.sh:
//
//	./calculator-client HOST:PORT        e.g. 127.0.0.1:4000
//	./calculator-client unix:/tmp/calc.sock
//
// It runs the checks the Go client runs (../calculator/checks.go: RunChecks
// and RunTailCallCheck), prints each result, and "PASS" at the end; it
// exits with status 1 on a wrong answer or a failed call.
//
// As the official sample client, it never waits for a promise (a
// capability in results not yet received) before passing it on: every
// promise goes back to the calculator as soon as it is made, in as many
// messages as use it, and the Finish of each call follows its pipelined
// calls at once.
#include "calculator.capnp.h"

#include <capnp/ez-rpc.h>
#include <kj/debug.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <vector>

namespace {

typedef std::function<void(Calculator::Expression::Builder)> Expr;

Expr lit(double v) {
  return [v](Calculator::Expression::Builder e) { e.setLiteral(v); };
}

Expr param(uint32_t i) {
  return [i](Calculator::Expression::Builder e) { e.setParameter(i); };
}

// Capability clients copy only from non-const references, and std::function
// copies its target: the expressions hold them through shared_ptr.
Expr prev(Calculator::Value::Client v) {
  auto p = std::make_shared<Calculator::Value::Client>(kj::mv(v));
  return [p](Calculator::Expression::Builder e) {
    Calculator::Value::Client ref = *p;
    e.setPreviousResult(kj::mv(ref));
  };
}

Expr apply(Calculator::Function::Client fn, std::initializer_list<Expr> args) {
  auto p = std::make_shared<Calculator::Function::Client>(kj::mv(fn));
  std::vector<Expr> list(args);
  return [p, list](Calculator::Expression::Builder e) {
    auto call = e.initCall();
    Calculator::Function::Client ref = *p;
    call.setFunction(kj::mv(ref));
    auto params = call.initParams(list.size());
    for (size_t i = 0; i < list.size(); i++) {
      list[i](params[i]);
    }
  };
}

// PowerFunction is served by this client and called back by the calculator.
class PowerFunction final : public Calculator::Function::Server {
 public:
  kj::Promise<void> call(CallContext context) override {
    auto params = context.getParams().getParams();
    KJ_REQUIRE(params.size() == 2, "Wrong number of parameters.");
    context.getResults().setValue(std::pow(params[0], params[1]));
    return kj::READY_NOW;
  }
};

class Checker {
 public:
  Checker(Calculator::Client calc, kj::WaitScope& ws) : calc(calc), ws(ws) {}

  int wrong = 0;

  // evaluate sends evaluate(e) and returns the Value, a promise.
  Calculator::Value::Client evaluate(Expr e) {
    auto req = calc.evaluateRequest();
    e(req.initExpression());
    return req.send().getValue();
  }

  Calculator::Function::Client op(Calculator::Operator o) {
    auto req = calc.getOperatorRequest();
    req.setOp(o);
    return req.send().getFunc();
  }

  Calculator::Function::Client define(int32_t paramCount, Expr body) {
    auto req = calc.defFunctionRequest();
    req.setParamCount(paramCount);
    body(req.initBody());
    return req.send().getFunc();
  }

  // expect sends a read of v (pipelined if v has not arrived) and keeps it
  // for wait.
  void expect(const char* name, double want, Calculator::Value::Client v) {
    pending.push_back(Pending{name, want, v.readRequest().send().then(
        [](capnp::Response<Calculator::Value::ReadResults>&& r) { return r.getValue(); })});
  }

  void expectPromise(const char* name, double want, kj::Promise<double> p) {
    pending.push_back(Pending{name, want, kj::mv(p)});
  }

  // expectCall calls fn on params directly (pipelined if fn has not
  // arrived) and keeps the answer for wait.
  void expectCall(const char* name, double want, Calculator::Function::Client& fn,
                  std::initializer_list<double> params) {
    auto req = fn.callRequest();
    auto list = req.initParams(params.size());
    uint i = 0;
    for (double v : params) {
      list.set(i++, v);
    }
    expectPromise(name, want, req.send().then(
        [](capnp::Response<Calculator::Function::CallResults>&& r) { return r.getValue(); }));
  }

  void wait() {
    for (auto& p : pending) {
      check(p.name, p.answer.wait(ws), p.want);
    }
    pending.clear();
  }

 private:
  struct Pending {
    const char* name;
    double want;
    kj::Promise<double> answer;
  };

  void check(const char* name, double got, double want) {
    if (got == want) {
      std::cout << "  " << name << " = " << got << std::endl;
    } else {
      std::cout << "  " << name << " = " << got << ", want " << want << ": WRONG" << std::endl;
      wrong++;
    }
  }

  Calculator::Client calc;
  kj::WaitScope& ws;
  std::vector<Pending> pending;
};

void run(Checker& c) {
  // A literal, read back pipelined.
  c.expect("123", 123, c.evaluate(lit(123)));
  c.wait();

  // Operators from getOperator, used before they arrive, add in two
  // messages.
  {
    auto add = c.op(Calculator::Operator::ADD);
    auto sub = c.op(Calculator::Operator::SUBTRACT);
    c.expect("123 + 45 - 67", 101, c.evaluate(apply(sub, {apply(add, {lit(123), lit(45)}), lit(67)})));
    c.expect("123 + 45", 168, c.evaluate(apply(add, {lit(123), lit(45)})));
    c.wait();
  }

  // Pipelining: results used in further evaluations before they arrive,
  // the product in two messages (the official client's add 3 and add 5).
  {
    auto add = c.op(Calculator::Operator::ADD);
    auto mul = c.op(Calculator::Operator::MULTIPLY);
    auto div = c.op(Calculator::Operator::DIVIDE);
    auto product = c.evaluate(apply(mul, {lit(4), lit(6)}));
    c.expect("4 * 6 + 3", 27, c.evaluate(apply(add, {prev(product), lit(3)})));
    auto sum = c.evaluate(apply(add, {lit(4), lit(6)}));
    auto times7 = c.evaluate(apply(mul, {prev(sum), lit(7)}));
    c.expect("(4 + 6) * 7", 70, times7);
    c.expect("(4 + 6) * 7 / 14", 5, c.evaluate(apply(div, {prev(times7), lit(14)})));
    c.expect("4 * 6 + 5", 29, c.evaluate(apply(add, {prev(product), lit(5)})));
    c.wait();
  }

  // Functions: f(x, y) = x * 100 + y, g(x) = f(x, x + 1) * 2.
  {
    auto add = c.op(Calculator::Operator::ADD);
    auto mul = c.op(Calculator::Operator::MULTIPLY);
    auto f = c.define(2, apply(add, {apply(mul, {param(0), lit(100)}), param(1)}));
    auto g = c.define(1, apply(mul, {apply(f, {param(0), apply(add, {param(0), lit(1)})}), lit(2)}));
    c.expect("f(12, 34)", 1234, c.evaluate(apply(f, {lit(12), lit(34)})));
    c.expect("g(21)", 4244, c.evaluate(apply(g, {lit(21)})));
    c.expectCall("f(5, 7) called directly", 507, f, {5, 7});
    c.wait();
  }

  // A callback: a Function served here, called by the calculator.
  {
    auto add = c.op(Calculator::Operator::ADD);
    Calculator::Function::Client pow = kj::heap<PowerFunction>();
    c.expect("pow(2, 4 + 5) (a callback)", 512, c.evaluate(apply(pow, {lit(2), apply(add, {lit(4), lit(5)})})));
    c.wait();
  }

  // A tail call (RunTailCallCheck in ../calculator/checks.go): t(x, y) =
  // pow(x, y) with pow served here; a server that forwards t's call to pow
  // with a tail call (server.c++) answers t(2, 10) from this client's own
  // pow.
  {
    Calculator::Function::Client pow = kj::heap<PowerFunction>();
    auto t = c.define(2, apply(pow, {param(0), param(1)}));
    c.expectCall("t(2, 10) = pow(2, 10) called directly (a tail call)", 1024, t, {2, 10});
    c.expect("t(3, 4) evaluated", 81, c.evaluate(apply(t, {lit(3), lit(4)})));
    c.wait();
  }
}

}  // namespace

int main(int argc, const char* argv[]) {
  const char* addr = argc == 2 ? argv[1] : nullptr;
  if (addr == nullptr || addr[0] == '-') {
    std::cerr << "usage: " << argv[0] << " HOST:PORT\n"
                 "Runs the calculator checks against the server at HOST:PORT\n"
                 "(or unix:PATH) with Cap'n Proto EZ-RPC." << std::endl;
    return 2;
  }
  int wrong = 0;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    capnp::EzRpcClient client(addr);
    Calculator::Client calculator = client.getMain<Calculator>();
    Checker c(calculator, client.getWaitScope());
    run(c);
    wrong = c.wrong;
  })) {
    std::cerr << "calculator client: " << e->getDescription().cStr() << std::endl;
    return 1;
  }
  if (wrong > 0) {
    std::cout << "FAIL: " << wrong << " wrong answer(s)" << std::endl;
    return 1;
  }
  std::cout << "PASS" << std::endl;
  return 0;
}
