using System.Diagnostics;
using System.Security.Cryptography.X509Certificates;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// The API beyond loopback: HTTPS with a certificate from the cluster CA (<c>lsm tls issue</c>), plain HTTP refused there,
/// and <c>lsm</c> trusting only the CA it is given (<c>--ca-file</c> / LSM_CA_FILE) for the name it dialled. One Coordinator
/// process bound to every interface (0.0.0.0); every request goes to 127.0.0.1 or localhost. Stopped by its pid.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class HttpsApiTests : IAsyncLifetime
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"lsm-https-{Guid.NewGuid():N}");
    private string Ca => Path.Combine(_root, "ca", "ca.crt");
    private string OtherCa => Path.Combine(_root, "other", "ca.crt");
    private string Certificate => Path.Combine(_root, "ca", "coordinator-api.crt");
    private string Key => Path.Combine(_root, "ca", "coordinator-api.key");

    public async Task InitializeAsync()
    {
        foreach (var arguments in new[]
                 {
                     new[] { "tls", "ca", "--dir", Path.Combine(_root, "ca") },
                     ["tls", "ca", "--dir", Path.Combine(_root, "other")],
                     // The API's certificate names 127.0.0.1 only: "localhost" is another name, which lsm must refuse.
                     ["tls", "issue", "coordinator-api", "--dir", Path.Combine(_root, "ca"), "--address", "127.0.0.1"],
                 })
        {
            var made = await CliProcess.RunAsync(null, arguments);
            Assert.True(made.ExitCode == 0, made.ToString());
        }
    }

    public Task DisposeAsync()
    {
        Directory.Delete(_root, recursive: true);
        return Task.CompletedTask;
    }

    [Fact]
    public async Task An_https_api_beyond_loopback_is_reached_by_lsm_only_through_the_ca_it_is_given_and_for_the_name_it_dialled()
    {
        var port = TokenCoordinator.FreePort();
        var cluster = TokenCoordinator.FreePort();
        var data = Path.Combine(_root, "coordinator");
        var start = TokenCoordinator.Start("--port", cluster.ToString(), "--seed", $"akka.tcp://lsm@127.0.0.1:{cluster}",
            "--http", $"https://0.0.0.0:{port}", "--api-certificate", Certificate, "--api-key", Key, "--data-dir", data);
        start.Environment["LSM_Coordinator__ApiToken"] = TokenCoordinator.Token;
        using var coordinator = Process.Start(start)!;
        var log = new System.Text.StringBuilder();
        coordinator.OutputDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        coordinator.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        coordinator.BeginOutputReadLine();
        coordinator.BeginErrorReadLine();
        try
        {
            var api = $"https://127.0.0.1:{port}";
            await WaitReadyAsync(api, coordinator, log);
            var token = new Dictionary<string, string> { ["LSM_TOKEN"] = TokenCoordinator.Token };

            var trusted = await Lsm(api, token, "cluster", "show", "--json", "--ca-file", Ca);
            Assert.True(trusted.ExitCode == 0, trusted.ToString());
            Assert.Contains("members", trusted.Stdout);
            var fromEnvironment = await Lsm(api, new Dictionary<string, string>(token) { ["LSM_CA_FILE"] = Ca }, "cluster", "show", "--json");
            Assert.True(fromEnvironment.ExitCode == 0, fromEnvironment.ToString());

            // The cluster's private CA is in no system store: without --ca-file the certificate is not trusted.
            var untrusted = await Lsm(api, token, "cluster", "show");
            Assert.True(untrusted.ExitCode == 2, untrusted.ToString());
            Assert.Contains("no secure connection", untrusted.Stderr);
            Assert.Contains("--ca-file", untrusted.Stderr);

            var otherCa = await Lsm(api, token, "cluster", "show", "--ca-file", OtherCa);
            Assert.True(otherCa.ExitCode == 2, otherCa.ToString());
            Assert.Contains("does not chain to the CA in", otherCa.Stderr);

            var otherName = await Lsm($"https://localhost:{port}", token, "cluster", "show", "--ca-file", Ca);
            Assert.True(otherName.ExitCode == 2, otherName.ToString());
            Assert.Contains("does not name the host", otherName.Stderr);

            var notCa = await Lsm(api, token, "cluster", "show", "--ca-file", Certificate);
            Assert.True(notCa.ExitCode == 2, notCa.ToString());
            Assert.Contains("not a CA certificate", notCa.Stderr);

            // lsm never sends its token in the clear over the network: refused before any connection is made.
            var plain = await Lsm("http://192.0.2.10:9110", token, "cluster", "show");
            Assert.True(plain.ExitCode == 2, plain.ToString());
            Assert.Contains("plain HTTP beyond loopback", plain.Stderr);
        }
        finally
        {
            coordinator.Kill();
            await coordinator.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task A_coordinator_refuses_plain_http_beyond_loopback_and_an_https_address_without_a_usable_certificate()
    {
        var token = new Dictionary<string, string> { ["LSM_Coordinator__ApiToken"] = TokenCoordinator.Token };
        var looseKey = Path.Combine(_root, "loose.key");
        File.Copy(Key, looseKey);
        File.SetUnixFileMode(looseKey, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        var caKey = Path.Combine(_root, "ca", "ca.key");
        var cases = new (string Http, string[] Arguments, string Expected)[]
        {
            ($"http://0.0.0.0:{TokenCoordinator.FreePort()}", [], "beyond loopback the API speaks HTTPS only"),
            ($"https://0.0.0.0:{TokenCoordinator.FreePort()}", [], "needs the API's certificate"),
            ($"https://127.0.0.1:{TokenCoordinator.FreePort()}", ["--api-certificate", Certificate, "--api-key", looseKey], "readable by other users"),
            ($"https://127.0.0.1:{TokenCoordinator.FreePort()}", ["--api-certificate", Ca, "--api-key", caKey], "holds a CA certificate"),
            ($"https://127.0.0.1:{TokenCoordinator.FreePort()}", ["--api-certificate", Path.Combine(_root, "missing.crt")], "does not exist"),
            ($"http://127.0.0.1:{TokenCoordinator.FreePort()}", ["--api-certificate", Certificate, "--api-key", Key], "use https://"),
        };
        foreach (var (http, arguments, expected) in cases)
        {
            var (exit, stderr) = await TokenCoordinator.RunToExitAsync(http, arguments, token);
            Assert.True(exit == 2, $"{http} {string.Join(' ', arguments)}: exit {exit}\n{stderr}");
            Assert.Contains(expected, stderr);
        }
    }

    private static Task<CliResult> Lsm(string api, IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        CliProcess.RunWithEnvironmentAsync(api, environment, null, arguments);

    /// <summary>Until /healthz/ready answers over HTTPS, trusting the test's CA only.</summary>
    private async Task WaitReadyAsync(string api, Process coordinator, System.Text.StringBuilder log)
    {
        var authorities = new X509Certificate2Collection();
        authorities.ImportFromPemFile(Ca);
        using var handler = new SocketsHttpHandler();
        handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, _) =>
            certificate is not null && LiveMigration.Shared.Hosting.CertificateChain.Refusal(new X509Certificate2(certificate), authorities, null, "the test CA") is null;
        using var http = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(5) };
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(45);
        while (true)
        {
            try
            {
                if ((await http.GetAsync($"{api}/healthz/ready")).IsSuccessStatusCode) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            if (coordinator.HasExited || DateTime.UtcNow > deadline)
                throw new TimeoutException($"the Coordinator did not answer over HTTPS within 45 s (exited: {coordinator.HasExited}):\n{log}");
            await Task.Delay(200);
        }
    }
}
