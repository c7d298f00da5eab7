SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.amount = p.claims_amount
