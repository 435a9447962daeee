using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace LiveMigration.Coordinator.Tests.Persistence;

/// <summary>
/// A real PostgreSQL 15 for the test run: a fresh cluster (initdb, trust auth) under a short temp folder owned by
/// the <c>postgres</c> user, listening on loopback only, stopped by its own <c>pg_ctl stop</c> and deleted at the
/// end. Missing binaries fail the tests that use it with what to install: the journal's PostgreSQL path is never
/// silently left untested. Each test takes its own database (<see cref="CreateDatabaseAsync"/>).
/// </summary>
public sealed class PostgresServer : IAsyncLifetime
{
    public const string BinDirectory = "/usr/lib/postgresql/15/bin";
    private const string ServiceUser = "postgres";
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(60);

    // short: the server's unix socket goes here too, and its path must stay under the kernel's 107 bytes
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"lsm-pg-{Guid.NewGuid().ToString("N")[..8]}");
    private string DataDirectory => Path.Combine(_root, "data");
    private string LogFile => Path.Combine(_root, "server.log");
    private bool _started;

    public int Port { get; private set; }

    /// <summary>Connection string of the server's maintenance database.</summary>
    public string AdminConnectionString => ConnectionStringFor("postgres");

    public string ConnectionStringFor(string database) =>
        new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1", Port = Port, Username = ServiceUser, Database = database, Timeout = 15, CommandTimeout = 30,
        }.ToString();

    public async Task InitializeAsync()
    {
        var initdb = Path.Combine(BinDirectory, "initdb");
        if (!File.Exists(initdb))
            throw new InvalidOperationException(
                $"PostgreSQL 15 is not installed ({initdb} is missing), so the PostgreSQL journal cannot be tested: " +
                "install it with `apt-get install -y postgresql` (./run.sh test does so on Debian)");

        Directory.CreateDirectory(_root);
        if (RunsAsRoot)
            await RunAsync("chown", [$"{ServiceUser}:{ServiceUser}", _root], asServiceUser: false);
        await RunAsync(initdb, ["-D", DataDirectory, "--auth=trust", "--username", ServiceUser, "--no-sync"], asServiceUser: true);

        // a port picked by binding 0 may be taken by another test before the server binds it: try a few
        for (var attempt = 1; ; attempt++)
        {
            Port = FreeLoopbackPort();
            try
            {
                await RunAsync(Path.Combine(BinDirectory, "pg_ctl"),
                [
                    "-D", DataDirectory, "-l", LogFile, "-w", "-t", "30",
                    "-o", $"-p {Port} -k {_root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                    "start",
                ], asServiceUser: true);
                _started = true;
                return;
            }
            catch (InvalidOperationException) when (attempt < 3)
            {
            }
        }
    }

    /// <summary>A new empty database for one test, so tests never see each other's journal rows.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        var name = $"lsm_{Guid.NewGuid():N}";
        await using var connection = new NpgsqlConnection(AdminConnectionString);
        await connection.OpenAsync();
        await using var create = new NpgsqlCommand($"CREATE DATABASE {name}", connection);
        await create.ExecuteNonQueryAsync();
        return ConnectionStringFor(name);
    }

    public static async Task<long> CountRowsAsync(string connectionString, string table)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var count = new NpgsqlCommand($"SELECT COUNT(*) FROM \"{table}\"", connection);
        return (long)(await count.ExecuteScalarAsync())!;
    }

    public async Task DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        try
        {
            if (_started)
                await RunAsync(Path.Combine(BinDirectory, "pg_ctl"), ["-D", DataDirectory, "-m", "fast", "-w", "-t", "30", "stop"], asServiceUser: true);
        }
        finally
        {
            if (Directory.Exists(_root))
                Directory.Delete(_root, recursive: true);
        }
    }

    private static bool RunsAsRoot => Environment.UserName == "root";

    private async Task RunAsync(string program, IReadOnlyList<string> arguments, bool asServiceUser)
    {
        // the server refuses to run as root: as root, run its tools as the postgres user
        var start = new ProcessStartInfo(asServiceUser && RunsAsRoot ? "runuser" : program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (asServiceUser && RunsAsRoot)
            foreach (var argument in new[] { "-u", ServiceUser, "--", program })
                start.ArgumentList.Add(argument);
        foreach (var argument in arguments)
            start.ArgumentList.Add(argument);

        using var process = Process.Start(start)
            ?? throw new InvalidOperationException($"could not start {program}");
        using var timeout = new CancellationTokenSource(CommandTimeout);
        var output = process.StandardOutput.ReadToEndAsync(timeout.Token);
        var error = process.StandardError.ReadToEndAsync(timeout.Token);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} did not finish within {CommandTimeout.TotalSeconds} s");
        }
        if (process.ExitCode != 0)
        {
            var log = File.Exists(LogFile) ? await File.ReadAllTextAsync(LogFile) : "";
            throw new InvalidOperationException(
                $"{program} {string.Join(' ', arguments)} exited with {process.ExitCode}: {await output} {await error} {log}".Trim());
        }
    }

    private static int FreeLoopbackPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
