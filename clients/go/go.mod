module github.com/cyserve/cyserve/clients/go

go 1.19
