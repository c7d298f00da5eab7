SELECT COUNT(*) FROM bank.loans UNION SELECT COUNT(*) FROM insurer.policies
