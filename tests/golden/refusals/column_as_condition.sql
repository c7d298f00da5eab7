SELECT COUNT(*) FROM insurer.policies WHERE open_claim
