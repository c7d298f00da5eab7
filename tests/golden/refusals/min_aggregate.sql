SELECT MIN(amount) FROM bank.loans
