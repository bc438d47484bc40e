"""Recovery after an issuer outage, end to end and in real time: the issue's acceptance test.

    Start either example while the issuer refuses connections (or hangs, or serves garbage
    JSON, or answers 500); let a few requests get their 503; then make the issuer healthy.
    Valid tokens must pass again within 15 s, in the same process, for all four kinds of
    outage.

Both examples (FastAPI through httpx.ASGITransport on one event loop, Flask through its test
client) run in this process with their default settings: the real clock, the default fetch
timeout (5 s) and the default key policy. Nothing is tuned; wall time is the point.

Each (example, outage) case:

1. breaks its own issuer stand-in, then imports the example (it starts during the outage);
2. sends a few requests with a valid token, each a 503 + Retry-After + "temporarily_unavailable".
   A well-behaved client waits what Retry-After says, so each waits it out and then finds the
   issuer asked again: the backoff climbs to its cap (5 s) and the issuer is healed just after
   a failed try, the worst moment (a Retry-After above the cap is not waited out, so the issuer
   is still healed soon after the last try). A hanging issuer is healed while a try hangs, and
   that connection stays hung after healing (as a real one would) until the client gives up;
3. heals the issuer and polls with a valid token every 0.25 s until a 200 (giving up after
   20 s so that a slow recovery fails instead of hanging), then checks, in this order: the 200
   came within 15 s of healing; every 503 said Retry-After 1..5; each request while the issuer
   was down started a try (the Retry-After before it was the real wait); the issuer was not
   hammered while polling (at most one try per second, plus two); the next token passes on the
   cached keys.

The eight cases run concurrently, so the module takes about as long as the slowest case.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from faults import (
    ERROR_500,
    HANG,
    HEALTHY,
    NOT_JSON,
    REFUSE,
    AppClient,
    FaultyIssuer,
    Only,
    Reply,
    example_client,
)

KINDS = ("fastapi", "flask")
OUTAGES = (REFUSE, HANG, NOT_JSON, ERROR_500)
READ = "read:products"
RECOVERY_BOUND = 15.0  # seconds from healing to a 200: the requirement
GIVE_UP = 20.0  # seconds of polling before a case is declared unrecovered
POLL_EVERY = 0.25
RETRY_AFTER_MAX = 5  # the default outage_retry_max
FETCH_TIMEOUT = 5.0  # the default fetch_timeout: a hung try gives up after it
OUTAGE_REQUESTS = 4  # honouring Retry-After: 1, 2, 4 s apart; the last try leaves 5 s to wait
HANG_REQUESTS = 3  # each waits out a hung try (5 s); the issuer is healed during the last


class StickyHangIssuer(FaultyIssuer):
    """A FaultyIssuer whose hung requests stay hung when it is healed.

    ``FaultyIssuer.set_mode`` lets go of hanging requests on any switch; a real issuer that
    comes back does not answer the connections it left hanging. Those are released on
    ``stop()`` only (so that every handler thread is still joined there).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._held: list[threading.Event] = []

    def set_mode(self, mode: str, *, only: Only = None) -> None:
        # Not on REFUSE: closing the listener joins the handler threads.
        if self.mode == HANG and mode not in (HANG, REFUSE):
            self._held.append(self._release)
            self._release = threading.Event()  # what the base class sets instead
        super().set_mode(mode, only=only)

    def stop(self) -> None:
        for held in self._held:
            held.set()
        super().stop()


@dataclass
class Outcome:
    kind: str
    mode: str
    retry_afters: list[int] = field(default_factory=list)  # of the 503s before healing
    polling_retry_afters: list[int] = field(default_factory=list)  # of the 503s after it
    outage_tries: list[int] = field(default_factory=list)  # key fetches started per request
    polls: int = 0
    recovery: float | None = None  # seconds from healing to the first 200
    fetches_while_polling: int = 0
    issuer_asked_while_polling: int = 0  # discovery requests that reached the issuer

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.mode}"

    def row(self) -> str:
        took = "never" if self.recovery is None else f"{self.recovery:5.2f} s"
        polling = self.polling_retry_afters
        said = f"{max(polling)}..{min(polling)}" if polling else "-"
        return (
            f"{self.name:18} 200 {took:>8} after healing ({self.polls:2} polls, "
            f"{self.fetches_while_polling} tries); Retry-After {self.retry_afters} while down, "
            f"{said} while polling; tries per request while down {self.outage_tries}"
        )


def fetches(api: AppClient) -> int:
    return sum(source.cache.fetches for source in api.server.key_sources)


def retry_after_of_503(reply: Reply, outcome: Outcome, *, polling: bool = False) -> int:
    """A 503 with the usual body: note its Retry-After (checked later) and return it."""
    assert reply.status == 503, (outcome.name, reply.status, reply.body)
    assert reply.headers["www-authenticate"].startswith("Bearer"), outcome.name
    assert reply.json()["error"] == "temporarily_unavailable", (outcome.name, reply.body)
    retry_after = int(reply.headers["retry-after"])
    (outcome.polling_retry_afters if polling else outcome.retry_afters).append(retry_after)
    return retry_after


def outage_requests(api: AppClient, faulty: FaultyIssuer, outcome: Outcome) -> None:
    """A few 503s, each request sent once the previous Retry-After has passed.

    A Retry-After above the promised cap is already wrong (checked later); then the next
    request goes soon, so that the issuer is still healed soon after the last failed try.
    """
    for i in range(OUTAGE_REQUESTS):
        before = fetches(api)
        retry_after = retry_after_of_503(api.get("/products", faulty.mint(READ)), outcome)
        outcome.outage_tries.append(fetches(api) - before)
        if i < OUTAGE_REQUESTS - 1:
            time.sleep((retry_after if retry_after <= RETRY_AFTER_MAX else POLL_EVERY) + 0.05)


def hang_requests(
    api: AppClient, faulty: FaultyIssuer, outcome: Outcome
) -> concurrent.futures.Future[Reply]:
    """503s while the issuer hangs; the last request is still waiting on a hung try on return."""
    for _ in range(HANG_REQUESTS - 1):
        before = fetches(api)
        retry_after_of_503(api.get("/products", faulty.mint(READ)), outcome)
        outcome.outage_tries.append(fetches(api) - before)
    asked = faulty.count("discovery")
    last: concurrent.futures.Future[Reply] = concurrent.futures.Future()

    def send() -> None:
        try:
            last.set_result(api.get("/products", faulty.mint(READ)))
        except BaseException as exc:
            last.set_exception(exc)

    threading.Thread(target=send, name=f"last-{outcome.name}", daemon=True).start()
    # Heal only once the try has reached the issuer and hangs there (or the request is over:
    # a policy that does not try again answers at once).
    deadline = time.monotonic() + 2 * FETCH_TIMEOUT + 1
    while faulty.count("discovery") == asked and not last.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return last


def run_case(api: AppClient, faulty: FaultyIssuer, mode: str) -> Outcome:
    outcome = Outcome(api.kind, mode)
    assert fetches(api) == 0, f"{outcome.name}: the example fetched keys at import"
    pending: concurrent.futures.Future[Reply] | None = None
    if mode == HANG:
        pending = hang_requests(api, faulty, outcome)
    else:
        outage_requests(api, faulty, outcome)

    faulty.set_mode(HEALTHY)
    healed = time.monotonic()
    fetched, asked = fetches(api), faulty.count("discovery")
    while time.monotonic() - healed < GIVE_UP:
        reply = api.get("/products", faulty.mint(READ))
        outcome.polls += 1
        if reply.status == 200:
            outcome.recovery = time.monotonic() - healed
            break
        retry_after_of_503(reply, outcome, polling=True)
        time.sleep(POLL_EVERY)
    outcome.fetches_while_polling = fetches(api) - fetched
    outcome.issuer_asked_while_polling = faulty.count("discovery") - asked
    if pending is not None:
        # The request whose try hung across the healing: a 503 once its client gave up.
        retry_after_of_503(pending.result(timeout=2 * FETCH_TIMEOUT + 5), outcome)
    return outcome


def check(outcome: Outcome, api: AppClient, faulty: FaultyIssuer) -> None:
    """The acceptance criterion first, then what the 503s said and how often the issuer was
    asked."""
    name = outcome.name
    assert outcome.recovery is not None, f"{name}: still 503 {GIVE_UP:.0f} s after healing"
    assert outcome.recovery <= RECOVERY_BOUND, f"{name}: 200 only {outcome.recovery:.2f} s later"
    said = outcome.retry_afters + outcome.polling_retry_afters
    assert all(1 <= ra <= RETRY_AFTER_MAX for ra in said), f"{name}: Retry-After {said}"
    # Retry-After is the real wait: each outage request found a try due (the first is the
    # cold start; a hung try is over by the time the next request comes).
    assert outcome.outage_tries == [1] * len(outcome.outage_tries), (
        f"{name}: tries per outage request {outcome.outage_tries}"
    )
    bound = outcome.recovery / 1.0 + 2
    assert outcome.fetches_while_polling <= bound, (
        f"{name}: {outcome.fetches_while_polling} tries in {outcome.recovery:.2f} s"
    )
    assert outcome.issuer_asked_while_polling <= bound, (
        f"{name}: the issuer was asked {outcome.issuer_asked_while_polling} times"
    )
    # Recovered for good: the next valid token passes on the cached keys.
    before = fetches(api)
    reply = api.get("/products", faulty.mint(READ))
    assert reply.status == 200, (name, reply.status, reply.body)
    assert fetches(api) == before, name


def test_valid_tokens_pass_within_15_s_of_the_issuer_recovering_from_each_outage() -> None:
    cases = [(kind, mode) for kind in KINDS for mode in OUTAGES]
    with contextlib.ExitStack() as stack:
        # Set up one at a time: importing an example sets process-wide environment variables.
        running: list[tuple[AppClient, FaultyIssuer, str]] = []
        for kind, mode in cases:
            faulty = stack.enter_context(StickyHangIssuer())
            faulty.set_mode(mode)  # the example starts during the outage
            running.append((stack.enter_context(example_client(kind, faulty)), faulty, mode))

        with concurrent.futures.ThreadPoolExecutor(len(running)) as pool:
            futures = [pool.submit(run_case, *case) for case in running]
        outcomes: list[Outcome] = []
        failures: list[str] = []
        for (kind, mode), (api, faulty, _), future in zip(cases, running, futures, strict=True):
            try:
                outcome = future.result()
            except AssertionError as exc:
                failures.append(f"{kind}/{mode}: {exc}")
                continue
            outcomes.append(outcome)
            try:
                check(outcome, api, faulty)
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])

        report = "\n".join(outcome.row() for outcome in outcomes)
        print(f"\n{report}")
        assert not failures, "\n".join([*failures, "", report])
