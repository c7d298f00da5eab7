SELECT SUM(DISTINCT amount) FROM bank.loans
