using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace LiveMigration.Demo.Bench;

/// <summary>
/// A PostgreSQL 15 server of its own for a bench or a test run: a fresh cluster (initdb, trust authentication) under a
/// short temp folder owned by the <c>postgres</c> user, listening on loopback only, stopped by its own <c>pg_ctl stop</c>
/// and deleted at the end. <paramref name="durable"/> false (tests) turns fsync off; a bench measures the default.
/// Missing binaries fail with what to install. Self-contained (no project types): the tests' fixture links this file.
/// </summary>
public sealed class ThrowawayPostgres : IAsyncDisposable
{
    public const string BinDirectory = "/usr/lib/postgresql/15/bin";
    public const string User = "postgres";
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(60);

    // short: the server's unix socket goes here too, and its path must stay under the kernel's 107 bytes
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"lsm-pg-{Guid.NewGuid().ToString("N")[..8]}");
    private bool _started;

    private ThrowawayPostgres()
    {
    }

    public int Port { get; private set; }
    private string DataDirectory => Path.Combine(_root, "data");
    private string LogFile => Path.Combine(_root, "server.log");

    public static async Task<ThrowawayPostgres> StartAsync(bool durable)
    {
        var initdb = Path.Combine(BinDirectory, "initdb");
        if (!File.Exists(initdb))
            throw new InvalidOperationException(
                $"PostgreSQL 15 is not installed ({initdb} is missing): install it with `apt-get install -y postgresql` (./run.sh test does so on Debian)");
        var server = new ThrowawayPostgres();
        try
        {
            Directory.CreateDirectory(server._root);
            if (RunsAsRoot) await server.RunAsync("chown", [$"{User}:{User}", server._root], asServiceUser: false);
            await server.RunAsync(initdb, ["-D", server.DataDirectory, "--auth=trust", "--username", User, .. durable ? Array.Empty<string>() : ["--no-sync"]],
                asServiceUser: true);
            var settings = durable ? "" : " -c fsync=off -c full_page_writes=off";
            // a port picked by binding 0 may be taken by another process before the server binds it: try a few
            for (var attempt = 1; ; attempt++)
            {
                server.Port = FreeLoopbackPort();
                try
                {
                    await server.RunAsync(Path.Combine(BinDirectory, "pg_ctl"),
                    [
                        "-D", server.DataDirectory, "-l", server.LogFile, "-w", "-t", "30",
                        "-o", $"-p {server.Port} -k {server._root} -c listen_addresses=127.0.0.1 -c max_connections=300{settings}", "start",
                    ], asServiceUser: true);
                    server._started = true;
                    return server;
                }
                catch (InvalidOperationException) when (attempt < 3)
                {
                }
            }
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>A new empty database; its address as <c>lsm local up --journal</c> takes it.</summary>
    public async Task<string> CreateDatabaseAsync(string name)
    {
        await RunAsync(Path.Combine(BinDirectory, "createdb"), ["-h", "127.0.0.1", "-p", Port.ToString(), name], asServiceUser: true);
        return $"postgres://{User}@127.0.0.1:{Port}/{name}";
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_started)
                await RunAsync(Path.Combine(BinDirectory, "pg_ctl"), ["-D", DataDirectory, "-m", "fast", "-w", "-t", "30", "stop"], asServiceUser: true);
        }
        finally
        {
            if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
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
            foreach (var argument in new[] { "-u", User, "--", program })
                start.ArgumentList.Add(argument);
        foreach (var argument in arguments)
            start.ArgumentList.Add(argument);

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {program}");
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
