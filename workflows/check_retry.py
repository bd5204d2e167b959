"""The checker's part for a stage's ``retry`` policy and the time limits (``timeout_s``,
``deadline_s``), which must stay below the broker's ack timeout."""

from __future__ import annotations

import yaml

from workflows.checking import CheckerBase
from workflows.language import BACKOFF_FACTOR_RANGE, MAX_ATTEMPTS_RANGE, RETRY_KEYS, RETRY_ON_ENTRY
from workflows.spec import RetryPolicy
from workflows.yaml_nodes import BOOL, SCALARS, STR, Entry, fmt, is_scalar

_BROKER_HINT = (
    "RabbitMQ redelivers a message left unacked past its consumer_timeout (30 min by "
    "default); lower the value, or raise consumer_timeout and the loader's broker_ack_timeout_s"
)


class RetryChecks(CheckerBase):
    """Reads a stage's ``retry`` policy and durations in seconds (``timeout_s``,
    ``deadline_s`` and the backoffs)."""

    def check_retry(self, entry: Entry | None, stage: str) -> RetryPolicy:
        """The retry policy; defaults fill what the file leaves out."""
        default = RetryPolicy()
        if entry is None:
            return default
        entries = self.sub_mapping(entry.value, f"'retry' of {stage}")
        if entries is None:
            return default
        self.check_keys(entries, entry.value, f"'retry' of {stage}", RETRY_KEYS, ())
        attempts = self.check_max_attempts(entries.get("max_attempts"), stage)
        initial_what = f"'retry.backoff_initial_s' of {stage}"
        initial = self.check_seconds(entries.get("backoff_initial_s"), initial_what)
        most = self.check_seconds(entries.get("backoff_max_s"), f"'retry.backoff_max_s' of {stage}")
        factor = self.check_backoff_factor(entries.get("backoff_factor"), stage)
        jitter = self.boolean(entries.get("jitter"), f"'retry.jitter' of {stage}")
        retry_on = self.check_retry_on(entries.get("retry_on"), stage)
        policy = RetryPolicy(
            max_attempts=default.max_attempts if attempts is None else attempts,
            backoff_initial_s=default.backoff_initial_s if initial is None else initial,
            backoff_max_s=default.backoff_max_s if most is None else most,
            backoff_factor=default.backoff_factor if factor is None else factor,
            jitter=default.jitter if jitter is None else jitter,
            retry_on=default.retry_on if retry_on is None else retry_on,
        )
        if most is not None:
            self.check_backoff_max(entries["backoff_max_s"].value, policy, stage)
        return policy

    def boolean(self, entry: Entry | None, what: str) -> bool | None:
        if entry is None:
            return None
        if not is_scalar(entry.value, BOOL):
            self.wrong_type(entry.value, what, "true or false")
            return None
        return SCALARS.construct_yaml_bool(entry.value)

    def check_backoff_factor(self, entry: Entry | None, stage: str) -> float | None:
        if entry is None:
            return None
        what = f"'retry.backoff_factor' of {stage}"
        value = self.number(entry.value, what)
        if value is None:
            return None
        low, high = BACKOFF_FACTOR_RANGE
        if not low < value <= high:
            bounds = f"above {fmt(low)} and at most {fmt(high)}"
            message = f"{what} must be {bounds}, not {fmt(value)}"
            hint = "each wait is the one before times the factor; for fixed waits set backoff_max_s"
            self.report(entry.value, "out-of-range", message, hint)
            return None
        return float(value)

    def check_retry_on(self, entry: Entry | None, stage: str) -> tuple[str, ...] | None:
        if entry is None:
            return None
        node, what = entry.value, f"'retry.retry_on' of {stage}"
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, what, "a list")
            return None
        if not node.value:
            hint = 'list what to retry ("*" for any error), or set max_attempts: 1'
            self.report(node, "bad-retry-on", f"{what} is empty: nothing would be retried", hint)
            return None
        names: dict[str, yaml.Node] = {}
        for item in node.value:
            if not is_scalar(item, STR):
                self.wrong_type(item, f"an entry of {what}", "a string")
                continue
            value: str = item.value
            if not value.strip():
                self.report(item, "bad-retry-on", f"an entry of {what} is empty")
            elif not RETRY_ON_ENTRY.fullmatch(value):
                message = f"{value!r} in {what} is no exception class name or error code"
                self.report(item, "bad-retry-on", message, "e.g. TimeoutError, model_unavailable")
            elif value in names:
                message = f"{value!r} is repeated in {what}"
                self.report(item, "bad-retry-on", message)
            else:
                names[value] = item
        if "*" in names and len(names) > 1:
            message = f"'*' in {what} already retries every error"
            self.report(names["*"], "bad-retry-on", message, "list either '*' or named errors")
            return None
        return tuple(names)

    def check_backoff_max(self, node: yaml.Node, policy: RetryPolicy, stage: str) -> None:
        most, initial = policy.backoff_max_s, policy.backoff_initial_s
        if most < initial:
            message = (
                f"'retry.backoff_max_s' of {stage} ({fmt(most)}) is below its "
                f"'retry.backoff_initial_s' ({fmt(initial)})"
            )
            self.report(node, "out-of-range", message)
        elif most >= self.broker_limit:
            message = (
                f"'retry.backoff_max_s' of {stage} ({fmt(most)}) must be below the broker's "
                f"ack timeout of {fmt(self.broker_limit)} s: a retried message stays unacked "
                "while it waits"
            )
            self.report(node, "backoff-over-broker-limit", message, _BROKER_HINT)

    def check_max_attempts(self, entry: Entry | None, stage: str) -> int | None:
        if entry is None:
            return None
        what = f"'retry.max_attempts' of {stage}"
        attempts = self.integer(entry.value, what)
        low, high = MAX_ATTEMPTS_RANGE
        if attempts is not None and not low <= attempts <= high:
            message = f"{what} must be between {low} and {high}, not {attempts}"
            self.report(entry.value, "out-of-range", message)
            return None
        return attempts

    def check_seconds(
        self, entry: Entry | None, what: str, allow_zero: bool = True
    ) -> float | None:
        """A duration in seconds: a number, 0 or more (above 0 unless ``allow_zero``)."""
        if entry is None:
            return None
        value = self.number(entry.value, what)
        if value is None:
            return None
        if value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "above 0"
            self.report(entry.value, "out-of-range", f"{what} must be {bound}, not {fmt(value)}")
            return None
        return float(value)

    def check_timeout(self, entry: Entry | None, what: str) -> float | None:
        timeout = self.check_seconds(entry, f"'timeout_s' of {what}", allow_zero=False)
        if entry is None or timeout is None:
            return None
        if timeout >= self.broker_limit:
            message = (
                f"'timeout_s' of {what} ({fmt(timeout)}) must be below the broker's ack timeout"
                f" of {fmt(self.broker_limit)} s: the message is acked only when the stage ends"
            )
            self.report(entry.value, "timeout-over-broker-limit", message, _BROKER_HINT)
            return None
        return timeout
