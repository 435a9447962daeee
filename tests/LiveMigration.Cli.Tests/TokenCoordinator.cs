using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// A Coordinator process alone (a cluster of one), started with an API token (in its environment): what the API lets through and what
/// it refuses, in the API's JSON error shape, and how <c>lsm</c> sends the token. Stopped by its pid.
/// </summary>
public sealed class TokenCoordinator : IAsyncLifetime
{
    public const string Token = "test-token-5f2d9c61a8e04b7f";
    /// <summary>The viewer's token (reads only), set beside the operator's <see cref="Token"/>.</summary>
    public const string ViewerToken = "viewer-token-0c7e41d9b2a3";
    private Process? _process;

    public string DataDirectory { get; } = Path.Combine(Path.GetTempPath(), $"lsm-token-{Guid.NewGuid():N}");
    public string Api { get; private set; } = "";
    public string Log => Path.Combine(DataDirectory, "coordinator.log");

    /// <summary>Beside lsm.dll's build output: src/Coordinator/bin/{configuration}/net10.0.</summary>
    public static string CoordinatorDll
    {
        get
        {
            var output = Path.GetDirectoryName(CliProcess.DllPath)!;
            var configuration = Path.GetFileName(Path.GetDirectoryName(output))!;
            var src = Path.GetFullPath(Path.Combine(output, "..", "..", "..", ".."));
            return Path.Combine(src, "Coordinator", "bin", configuration, "net10.0", "LiveMigration.Coordinator.dll");
        }
    }

    private static readonly HashSet<int> HandedOut = [];

    /// <summary>
    /// A port free now, never one this process handed out before: the kernel may give a just-released port again, and
    /// did (ClusterJoinTests got the same port for a Coordinator's remoting and its API, which then could not bind).
    /// </summary>
    public static int FreePort()
    {
        while (true)
        {
            int port;
            using (var listener = new TcpListener(IPAddress.Loopback, 0))
            {
                listener.Start();
                port = ((IPEndPoint)listener.LocalEndpoint).Port;
            }
            lock (HandedOut)
                if (HandedOut.Add(port)) return port;
        }
    }

    public static ProcessStartInfo Start(params string[] arguments)
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(CoordinatorDll);
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        psi.Environment["LSM_Cluster__ExtraHocon"] = ClusterNodeHosting.FastTestTimings;
        return psi;
    }

    /// <summary>
    /// A Coordinator with its API at <paramref name="httpUrl"/> and these switches, which must exit (refuse) within 60 s; its
    /// exit code and stderr. Killed by its pid when it does not.
    /// </summary>
    public static async Task<(int Exit, string Stderr)> RunToExitAsync(string httpUrl, IEnumerable<string> arguments,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var port = FreePort();
        var data = Path.Combine(Path.GetTempPath(), $"lsm-refused-{Guid.NewGuid():N}");
        try
        {
            var start = Start(["--port", port.ToString(), "--seed", $"akka.tcp://lsm@127.0.0.1:{port}", "--http", httpUrl, "--data-dir", data, .. arguments]);
            foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
            using var process = Process.Start(start)!;
            var stderr = process.StandardError.ReadToEndAsync();
            var stdout = process.StandardOutput.ReadToEndAsync();
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            try
            {
                await process.WaitForExitAsync(limit.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill();
                throw;
            }
            await stdout;
            return (process.ExitCode, await stderr);
        }
        finally
        {
            if (Directory.Exists(data)) Directory.Delete(data, recursive: true);
        }
    }

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(DataDirectory);
        var port = FreePort();
        Api = $"http://127.0.0.1:{FreePort()}";
        // The token through the environment, the way that names no file on the command line: lsm finds no token file of
        // this Coordinator by itself, so the tests see what an lsm without a token gets.
        var start = Start("--port", port.ToString(), "--seed", $"akka.tcp://lsm@127.0.0.1:{port}", "--http", Api, "--data-dir", DataDirectory);
        start.Environment["LSM_Coordinator__ApiToken"] = Token;
        start.Environment["LSM_Coordinator__ViewerToken"] = ViewerToken;
        _process = Process.Start(start)!;
        var log = new StreamWriter(Log) { AutoFlush = true };
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(45);
        while (true)
        {
            try
            {
                if ((await http.GetAsync($"{Api}/healthz/ready")).IsSuccessStatusCode) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            if (_process.HasExited || DateTime.UtcNow > deadline)
                throw new TimeoutException($"the Coordinator was not ready within 45 s (exited: {_process.HasExited})");
            await Task.Delay(200);
        }
    }

    public async Task DisposeAsync()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill();
            await _process.WaitForExitAsync();
        }
        _process?.Dispose();
        Directory.Delete(DataDirectory, recursive: true);
    }
}
