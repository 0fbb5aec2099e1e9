"""The adversarial suite: the suites play the attacker (issue 26).

Each module is one class of attack. The invariant under test is the operator's, not the code's rule:
revenue covers what the upstream served, no tenant changes another's outcome, nothing is credited that
was not paid, and a hostile body is a 4xx — never a 5xx, never a credit lost or created.
"""
