"""The end of a run or an evaluation in a few aligned lines: errors in percent, each skip reason once."""
from __future__ import annotations


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:6.2f} %"


def format_summary(result: dict) -> str:
    """``result`` (final.json, or what ``evaluate`` returns) as aligned lines: clean, attack and verified error
    (after each verifier of the cascade), the examples each stage settled, the unknowns, and one line per
    distinct skip reason naming the verifiers it skipped."""
    rows = [("clean error", result.get("clean_error")), ("PGD error", result.get("pgd_error"))]
    if result.get("attack_error") is not None and result.get("attack_error") != result.get("pgd_error"):
        rows.append(("attack error (+AutoAttack)", result["attack_error"]))
    if result.get("robust_error_lower_bound") not in (None, result.get("attack_error"), result.get("pgd_error")):
        rows.append(("falsified (+abcrown)", result["robust_error_lower_bound"]))
    rows.append(("verified error", result.get("verified_error")))
    skipped = result.get("skipped") or {}
    rows += [(f"  after {method}", error) for method, error in (result.get("verified_error_by_method") or {}).items()
             if method not in skipped]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {_percent(value)}" for name, value in rows]
    if result.get("verified_by") is not None and result.get("falsified_by") is not None:
        verified = ", ".join(f"{m} {n}" for m, n in result["verified_by"].items() if n is not None)
        falsified = ", ".join(f"{s} {n}" for s, n in result["falsified_by"].items() if n)
        lines.append(f"examples verified by {verified}; falsified by {falsified or 'none'}; "
                     f"unknown {result.get('unknown', 0)}")
    reasons: dict[str, list[str]] = {}
    for method, reason in skipped.items():
        reasons.setdefault(reason, []).append(method)
    lines += [f"skipped {', '.join(methods)}: {reason}" for reason, methods in reasons.items()]
    if result.get("num_examples") is not None:
        lines.append(f"on {result['num_examples']} test examples at eps {result.get('eps', float('nan')):g}")
    return "\n".join(lines)
