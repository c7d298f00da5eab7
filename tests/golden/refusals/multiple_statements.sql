SELECT COUNT(*) FROM bank.loans; SELECT COUNT(*) FROM insurer.policies
