SELECT COUNT(*) FROM bnk.loans
