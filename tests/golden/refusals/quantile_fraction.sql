SELECT QUANTILE_CONT(amount, 1.5) FROM bank.loans
