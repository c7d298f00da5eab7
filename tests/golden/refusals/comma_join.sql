SELECT COUNT(*) FROM bank.loans l, insurer.policies p WHERE l.amount > 5
