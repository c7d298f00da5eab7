SELECT COUNT(*) FROM bank.loans INTERSECT SELECT COUNT(*) FROM insurer.policies
