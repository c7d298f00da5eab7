SELECT COUNT(*) FROM bank.loans NATURAL JOIN insurer.policies
