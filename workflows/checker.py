"""The workflow checker: one class composed of the mixins of each part of the language, with
the checks of the file as a whole."""

from __future__ import annotations

import yaml

from workflows.check_graph import GraphChecks
from workflows.check_input import InputChecks
from workflows.check_stages import OutputChecks, StageChecks
from workflows.diagnostics import Diagnostic
from workflows.drafts import Stages
from workflows.language import WORKFLOW_KEYS, WORKFLOW_NAME, WORKFLOW_REQUIRED
from workflows.spec import Workflow
from workflows.yaml_nodes import Entry, describe


class Checker(InputChecks, OutputChecks, StageChecks, GraphChecks):
    """Checks one file and builds its Workflow.

    Each ``check_*`` method reports its own problems and returns what it built, or None when
    the part is absent or broken. Callers tell the two apart by the error count: a part built
    from broken pieces is dropped when ``failed_since(mark)`` says an error was reported while
    checking it, and ``check`` builds the Workflow only from parts that all passed.
    """

    # --- the file --------------------------------------------------------------------------

    def check(self) -> Workflow | None:
        root = self.parse()
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            kind = describe(root)
            self.report(root, "not-a-mapping", f"a workflow must be a mapping, not {kind}")
            return None
        entries = self.mapping(root, "the workflow")
        self.check_keys(entries, root, "the workflow", WORKFLOW_KEYS, WORKFLOW_REQUIRED)
        name = self.check_workflow_name(entries.get("name"))
        version = self.check_version(entries.get("version"))
        description = self.optional_string(entries.get("description"), "'description'")
        deadline = self.check_seconds(entries.get("deadline_s"), "'deadline_s'", allow_zero=False)
        inputs = self.check_inputs(entries.get("input"))
        outputs = self.check_outputs(entries.get("outputs"))
        main = self.check_stages(entries.get("stages"))
        on_failure = self.check_handlers(entries.get("on_failure"), "on_failure")
        finally_ = self.check_handlers(entries.get("finally"), "finally")
        stages = Stages(main or [], on_failure, finally_)
        self.check_unique_ids(stages.all)
        self.check_graph(stages)
        self.check_expressions(stages)
        if self.failed_since(0) or name is None or version is None or main is None:
            return None
        return Workflow(
            name=name,
            version=version,
            description=description or "",
            deadline_s=deadline,
            input=inputs,
            outputs=outputs,
            stages=tuple(draft.build() for draft in main),
            on_failure=tuple(draft.build() for draft in on_failure),
            finally_=tuple(draft.build() for draft in finally_),
            source=str(self.path),
        )

    def parse(self) -> yaml.Node | None:
        """The root node, or None after reporting why there is none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.report(None, "unreadable-file", f"cannot read the file: {exc}")
            return None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            self.report_syntax(exc)
            return None
        except yaml.YAMLError as exc:  # e.g. a control character: there is no mark
            self.report(None, "yaml-syntax", " ".join(str(exc).split()))
            return None
        if root is None:
            self.report(None, "not-a-mapping", "the file is empty; a workflow is a mapping")
        return root

    def report_syntax(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.diagnostics.append(
            Diagnostic(
                file=str(self.path),
                line=line,
                column=column,
                severity="error",
                code="yaml-syntax",
                message=message,
            )
        )

    # --- name, version ---------------------------------------------------------------------

    def check_workflow_name(self, entry: Entry | None) -> str | None:
        if entry is None:
            return None
        self.name_node = entry.value
        name = self.name(entry.value, "the workflow name", WORKFLOW_NAME)
        if name is not None and name != self.path.stem:
            self.report(
                entry.value,
                "name-mismatch",
                f"workflow {name!r} is defined in a file named {self.path.name!r}",
                f"name the file {name}{self.path.suffix}, so the workflow is easy to find",
                severity="warning",
            )
        return name

    def check_version(self, entry: Entry | None) -> int | None:
        if entry is None:
            return None
        version = self.integer(entry.value, "'version'")
        if version is not None and version < 1:
            self.report(entry.value, "out-of-range", f"'version' must be 1 or more, not {version}")
            return None
        return version
