SELECT * FROM bank.loans
