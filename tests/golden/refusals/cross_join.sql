SELECT COUNT(*) FROM bank.loans CROSS JOIN insurer.policies
