SELECT QUANTILE_CONT(amount, [0.25, 0.75]) FROM bank.loans
