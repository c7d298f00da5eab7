SELECT SUM(SQRT(amount - 10)) FROM bank.loans
