"""The safe default policy that provisioning writes into every silo's kit.

It refuses code not signed by a key the silo trusts, inputs from any other storage, and
``sensitive`` outputs leaving the silo; it allows only the declassifications federated
learning needs (model parameters and metrics, ``sensitive`` → ``intermediate``) and
approves everything else. A silo edits the file to tighten it (an epsilon cap, a person
for new authors); the comments say how.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["default_policy_yaml"]

_RULES = """\
# Rules are tried in order; the first whose `when` holds decides (approve, reject or
# manual: held until the silo's administrator runs `fedsilo approval approve ID`).
# Every key of a `when` must hold; a rule without `when` applies to every job.
# Keys: signature, author_in, author_not_in, reader_not_in, job_name_in, input_outside_silo,
# input_classification, output_leaving, declassification_any,
# declassification_not_in, epsilon_above, epsilon_missing, secure_aggregation_missing,
# resources_above, code_changed, output_bytes_above.
rules:
  - name: code-must-be-signed
    when: {signature: [unsigned, invalid, untrusted]}
    decision: reject
    reason: job code must be signed by a key this silo trusts (trusted_keys)

  - name: inputs-from-this-silo-only
    when: {input_outside_silo: true}
    decision: reject
    reason: a job in this silo reads only this silo's own storage

  - name: nothing-sensitive-leaves
    when: {output_leaving: [sensitive]}
    decision: reject
    reason: sensitive data never leaves this silo

  - name: only-model-declassification
    when:
      declassification_not_in:
        - {output: model, from: sensitive, to: intermediate}
        - {output: metrics, from: sensitive, to: intermediate}
    decision: reject
    reason: only model parameters and metrics may be declassified, to intermediate

  # To cap the privacy budget, add before the last rule:
  #  - name: epsilon-cap
  #    when: {epsilon_above: 8.0}
  #    decision: reject
  # To have a person approve jobs of new authors (approvals lapse after 72 hours):
  #  - name: new-authors-need-a-person
  #    when: {author_not_in: [alice]}
  #    decision: manual
  #    expires_after_hours: 72
  # To refuse jobs whose results and model would go to anyone but some submitters
  # (a job's share_with names who reads them besides its author):
  #  - name: results-stay-with-us
  #    when: {reader_not_in: [alice]}
  #    decision: reject
  # To have a person read the code whenever it differs from the code this silo approved
  # last for a job of the same name (and the first time a name is seen):
  #  - name: changed-code-needs-a-person
  #    when: {code_changed: true}
  #    decision: manual
  # To have a person look at any job whose model (or metrics) would leave with more than
  # a size per upload (`fedsilo approval show ID` lists every tensor):
  #  - name: big-outputs-need-a-person
  #    when: {output_bytes_above: 64MiB}
  #    decision: manual

  - name: everything-else
    decision: approve
    reason: signed code, this silo's inputs, nothing sensitive leaving

# When no rule applies (never with the rule above): reject.
default: reject
"""


def default_policy_yaml(trusted_keys: Mapping[str, str]) -> str:
    """The default policy as commented YAML, trusting ``trusted_keys`` (name → ``.pub`` line).

    Names and keys are written as quoted strings, so any name is safe to embed.
    """
    head = (
        "# Approval policy of this silo: what its approval endpoint decides before any job\n"
        "# runs here. Read once when the endpoint starts; restart it after editing.\n"
        "#\n"
        "# Ed25519 public keys whose signatures this silo trusts (name: the .pub line).\n"
    )
    if trusted_keys:
        keys = "trusted_keys:\n" + "".join(
            f"  {json.dumps(name)}: {json.dumps(line.strip())}\n"
            for name, line in trusted_keys.items()
        )
    else:
        keys = "trusted_keys: {}  # none yet: every job is refused until a key is added\n"
    return f"{head}{keys}\n{_RULES}"
