"""The credit ledger: balances, holds, settles, releases. Knows nothing of HTTP."""
