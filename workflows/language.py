"""What the workflow language allows: the keys of each section, name patterns and ranges."""

from __future__ import annotations

import re

WORKFLOW_NAME = re.compile(r"[a-z][a-z0-9_-]*")
STAGE_ID = WORKFLOW_NAME
QUEUE_NAME = re.compile(r"[a-z][a-z0-9_.-]*")
#: Input and output names become struct fields and, later, ``input.<name>`` in expressions,
#: so they are identifiers (no hyphens).
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")
SETTING_REF = re.compile(r"\$([A-Z][A-Z0-9_]*)")

#: An entry of ``retry.retry_on``: ``*``, an exception class name (``TimeoutError``,
#: ``httpx.ReadTimeout``) or an error code (``model_unavailable``).
RETRY_ON_ENTRY = re.compile(r"\*|[A-Za-z_][A-Za-z0-9_.:-]*")

MAX_ATTEMPTS_RANGE = (1, 20)
#: ``retry.backoff_factor`` must be above the first and at most the second.
BACKOFF_FACTOR_RANGE = (1.0, 10.0)
MAX_CONCURRENCY_RANGE = (1, 100)

# Allowed keys per section, in documentation order. Adding a key to the language means adding
# it here, reading it in the matching ``check_*`` method of the checker (``workflows.checker``
# and the ``workflows.check_*`` modules), and describing it in language.schema.json.
WORKFLOW_KEYS = (
    "name", "version", "description", "deadline_s", "input", "outputs", "stages", "on_failure",
    "finally",
)  # fmt: skip
WORKFLOW_REQUIRED = ("name", "version", "stages")
STAGE_KEYS = (
    "id", "actor", "queue", "needs", "when", "foreach", "max_concurrency", "input", "params",
    "retry", "timeout_s",
)  # fmt: skip
STAGE_REQUIRED = ("id", "actor")
#: Keys of main stages only: handlers run once the task has ended, alone.
MAIN_ONLY_KEYS = ("needs", "when", "foreach", "max_concurrency")
RETRY_KEYS = (
    "max_attempts", "backoff_initial_s", "backoff_factor", "backoff_max_s", "jitter", "retry_on"
)  # fmt: skip
OUTPUT_KEYS = ("type", "description")
NUMBER_LIMITS = ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum")
LENGTH_LIMITS = ("min_length", "max_length")
FIELD_KEYS = ("type", "description", "default", "enum", *NUMBER_LIMITS, *LENGTH_LIMITS)

# What other workflow languages call our keys: an unknown key found here gets a "did you
# mean" hint for our name (when that key is allowed where it was written).
KEY_ALIASES = {
    "depends_on": "needs", "depends": "needs", "after": "needs", "requires": "needs",
    "if": "when", "condition": "when", "for_each": "foreach", "each": "foreach",
    "concurrency": "max_concurrency", "parallelism": "max_concurrency", "inputs": "input",
    "on_error": "on_failure", "on_fail": "on_failure", "always": "finally", "ensure": "finally",
}  # fmt: skip
