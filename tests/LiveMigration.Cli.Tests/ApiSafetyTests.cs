using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tests;

[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ApiSafetyTests(TokenCoordinator coordinator) : IClassFixture<TokenCoordinator>
{
    private static HttpClient Client(string? token = null)
    {
        var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        if (token is not null) http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        return http;
    }

    private static async Task<JsonElement> ErrorOf(HttpResponseMessage response, int status)
    {
        var body = await response.Content.ReadAsStringAsync();
        Assert.True((int)response.StatusCode == status, $"{(int)response.StatusCode} {body}");
        Assert.DoesNotContain("   at ", body);
        var json = JsonDocument.Parse(body).RootElement;
        Assert.False(string.IsNullOrEmpty(json.GetProperty("code").GetString()));
        Assert.False(string.IsNullOrEmpty(json.GetProperty("message").GetString()));
        return json;
    }

    [Fact]
    public async Task Without_the_token_api_and_metrics_answer_401_and_health_stays_open()
    {
        foreach (var token in new[] { null, "wrong-token", TokenCoordinator.Token + "x" })
        {
            using var http = Client(token);
            foreach (var path in new[] { "/api/cluster", "/api/migrations", "/metrics", "/API/cluster" })
            {
                using var response = await http.GetAsync(coordinator.Api + path);
                var error = await ErrorOf(response, 401);
                Assert.Equal("UNAUTHORIZED", error.GetProperty("code").GetString());
                Assert.Contains("Bearer", response.Headers.WwwAuthenticate.ToString());
            }
            using var post = await http.PostAsync(coordinator.Api + "/api/cluster/down-unreachable", null);
            await ErrorOf(post, 401);
            foreach (var path in new[] { "/healthz", "/healthz/live", "/healthz/ready" })
                Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(coordinator.Api + path)).StatusCode);
            // Open, but without the token it says up or down and nothing of the node's address or journal.
            var anonymous = JsonDocument.Parse(await http.GetStringAsync(coordinator.Api + "/healthz")).RootElement;
            Assert.Equal("up", anonymous.GetProperty("checks").GetProperty("journal").GetProperty("status").GetString());
            Assert.Equal("", anonymous.GetProperty("checks").GetProperty("journal").GetProperty("detail").GetString());
        }

        using var authorized = Client(TokenCoordinator.Token);
        Assert.Equal(HttpStatusCode.OK, (await authorized.GetAsync(coordinator.Api + "/api/cluster")).StatusCode);
        var detailed = JsonDocument.Parse(await authorized.GetStringAsync(coordinator.Api + "/healthz")).RootElement;
        Assert.Contains("journal", detailed.GetProperty("checks").GetProperty("journal").GetProperty("detail").GetString());
        // With the token a POST still has to be JSON: a form is refused before it reaches anything.
        using (var form = await authorized.PostAsync(coordinator.Api + "/api/cluster/down-unreachable", new FormUrlEncodedContent([])))
            Assert.Equal("NOT_JSON", (await ErrorOf(form, 415)).GetProperty("code").GetString());
        Assert.Equal(HttpStatusCode.OK, (await authorized.GetAsync(coordinator.Api + "/metrics")).StatusCode);
        var list = JsonDocument.Parse(await authorized.GetStringAsync(coordinator.Api + "/api/migrations")).RootElement;
        Assert.Equal(0, list.GetProperty("migrations").GetArrayLength());
    }

    [Fact]
    public async Task Lsm_sends_the_token_from_a_token_file_or_LSM_TOKEN_refuses_it_as_an_argument_and_a_401_is_exit_2()
    {
        var without = await CliProcess.RunAsync(coordinator.Api, "cluster", "show");
        Assert.True(without.ExitCode == 2, without.ToString());
        Assert.Contains("needs a token", without.Stderr);
        Assert.Contains("--token-file", without.Stderr);

        var wrong = await CliProcess.RunAsync(coordinator.Api, "migrations", "--token-file", TokenFile("nope"));
        Assert.True(wrong.ExitCode == 2, wrong.ToString());
        Assert.Contains("did not accept the token", wrong.Stderr);

        var option = await CliProcess.RunAsync(coordinator.Api, "cluster", "show", "--token-file", TokenFile(TokenCoordinator.Token));
        Assert.True(option.ExitCode == 0, option.ToString());
        Assert.Contains("leader", option.Stdout);

        // on the command line every user of the machine reads it: refused, naming what to use instead, and nothing is sent
        var argument = await CliProcess.RunAsync(coordinator.Api, "cluster", "show", "--token", TokenCoordinator.Token);
        Assert.True(argument.ExitCode == 2, argument.ToString());
        Assert.Contains("--token is refused", argument.Stderr + argument.Stdout);
        Assert.Contains("--token-file", argument.Stderr + argument.Stdout);

        // a token file others can read is no secret: refused before anything is sent
        var open = TokenFile(TokenCoordinator.Token);
        File.SetUnixFileMode(open, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        var readable = await CliProcess.RunAsync(coordinator.Api, "cluster", "show", "--token-file", open);
        Assert.True(readable.ExitCode == 2, readable.ToString());
        Assert.Contains("readable by other users", readable.Stderr);

        var env = await RunWithTokenVariableAsync("migrations", "--json");
        Assert.True(env.ExitCode == 0, env.ToString());
        Assert.Equal(0, JsonDocument.Parse(env.Stdout).RootElement.GetProperty("migrations").GetArrayLength());
    }

    [Fact]
    public async Task A_viewer_token_reads_lists_metrics_and_streams_and_every_change_is_a_403_that_lsm_explains_and_the_audit_lists()
    {
        using var viewer = Client(TokenCoordinator.ViewerToken);
        foreach (var path in new[] { "/api/cluster", "/api/migrations", "/api/inventory", "/metrics" })
            Assert.True((await viewer.GetAsync(coordinator.Api + path)).StatusCode == HttpStatusCode.OK, path);
        Assert.Contains("journal", JsonDocument.Parse(await viewer.GetStringAsync(coordinator.Api + "/healthz")).RootElement
            .GetProperty("checks").GetProperty("journal").GetProperty("detail").GetString());
        using (var stream = await viewer.SendAsync(new HttpRequestMessage(HttpMethod.Get, coordinator.Api + "/api/cluster/events"), HttpCompletionOption.ResponseHeadersRead))
        {
            Assert.Equal(HttpStatusCode.OK, stream.StatusCode);
            Assert.Equal("text/event-stream", stream.Content.Headers.ContentType?.MediaType);
        }
        foreach (var path in new[] { "/api/cluster/down-unreachable", "/api/migrations", "/api/domains", "/api/vms/x/stop" })
        {
            using var change = await viewer.PostAsync(coordinator.Api + path, new StringContent("{}", Encoding.UTF8, "application/json"));
            var error = await ErrorOf(change, 403);
            Assert.Equal("FORBIDDEN", error.GetProperty("code").GetString());
        }
        Assert.Equal("FORBIDDEN", (await ErrorOf(await viewer.GetAsync(coordinator.Api + "/api/audit"), 403)).GetProperty("code").GetString());

        var viewerFile = TokenFile(TokenCoordinator.ViewerToken);
        var reads = await CliProcess.RunAsync(coordinator.Api, "cluster", "show", "--token-file", viewerFile);
        Assert.True(reads.ExitCode == 0, reads.ToString());
        var refused = await CliProcess.RunAsync(coordinator.Api, "cluster", "down-unreachable", "--token-file", viewerFile);
        Assert.True(refused.ExitCode == 2, refused.ToString());
        Assert.Contains("this token is a viewer token: POST", refused.Stderr);
        Assert.Contains("/api/cluster/down-unreachable needs the operator token", refused.Stderr);

        var audit = await CliProcess.RunAsync(coordinator.Api, "audit", "--json", "--token-file", TokenFile(TokenCoordinator.Token));
        Assert.True(audit.ExitCode == 0, audit.ToString());
        var entries = JsonDocument.Parse(audit.Stdout).RootElement.GetProperty("entries").EnumerateArray().ToList();
        foreach (var path in new[] { "/api/cluster/down-unreachable", "/api/migrations", "/api/domains", "/api/vms/x/stop" })
            Assert.Contains(entries, e => e.GetProperty("path").GetString() == path && e.GetProperty("role").GetString() == "viewer"
                                          && e.GetProperty("status").GetInt32() == 403 && e.GetProperty("errorCode").GetString() == "FORBIDDEN");
        Assert.DoesNotContain(TokenCoordinator.ViewerToken, audit.Stdout);
    }

    /// <summary>A 0600 file holding <paramref name="token"/>, in the Coordinator's test folder.</summary>
    private string TokenFile(string token)
    {
        var path = Path.Combine(coordinator.DataDirectory, $"token-{Guid.NewGuid():N}");
        File.WriteAllText(path, token + "\n");
        File.SetUnixFileMode(path, ApiTokenFile.Mode);
        return path;
    }

    [Fact]
    public async Task A_coordinator_refuses_a_token_on_its_command_line_and_a_token_file_others_can_read()
    {
        var open = Path.Combine(coordinator.DataDirectory, $"open-token-{Guid.NewGuid():N}");
        File.WriteAllText(open, "a-token-others-can-read");
        File.SetUnixFileMode(open, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
        foreach (var (arguments, expected) in new[]
                 {
                     (new[] { "--api-token", "secret-on-the-command-line" }, "--api-token is refused"),
                     (["--api-token-file", open], "readable by other users"),
                 })
        {
            var (exit, stderr) = await RunCoordinatorToExitAsync(arguments);
            Assert.Equal(2, exit);
            Assert.Contains(expected, stderr);
        }
    }

    private static Task<(int Exit, string Stderr)> RunCoordinatorToExitAsync(params string[] arguments) =>
        RunCoordinatorToExitAsync("127.0.0.1", arguments);

    private static Task<(int Exit, string Stderr)> RunCoordinatorToExitAsync(string httpHost, string[] arguments) =>
        TokenCoordinator.RunToExitAsync($"http://{httpHost}:{TokenCoordinator.FreePort()}", arguments);

    /// <summary>lsm with LSM_API and LSM_TOKEN in its environment (CliProcess sets only LSM_API).</summary>
    private async Task<CliResult> RunWithTokenVariableAsync(params string[] arguments)
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(CliProcess.DllPath);
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        psi.Environment["LSM_API"] = coordinator.Api;
        psi.Environment["LSM_TOKEN"] = TokenCoordinator.Token;
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(limit.Token);
        return new CliResult(process.ExitCode, await stdout, await stderr);
    }

    [Fact]
    public async Task Oversized_and_malformed_bodies_get_the_json_error_shape()
    {
        using var http = Client(TokenCoordinator.Token);
        var big = new string('x', 70 * 1024);
        using (var sized = await http.PostAsync(coordinator.Api + "/api/migrations", new StringContent(big, Encoding.UTF8, "application/json")))
            Assert.Equal("BODY_TOO_LARGE", (await ErrorOf(sized, 413)).GetProperty("code").GetString());

        // Without a Content-Length (chunked), the body is counted as it comes.
        var chunked = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(big)));
        chunked.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        using (var request = new HttpRequestMessage(HttpMethod.Post, coordinator.Api + "/api/migrations") { Content = chunked })
        {
            request.Headers.TransferEncodingChunked = true;
            using var response = await http.SendAsync(request);
            Assert.Equal("BODY_TOO_LARGE", (await ErrorOf(response, 413)).GetProperty("code").GetString());
        }

        using (var malformed = await http.PostAsync(coordinator.Api + "/api/migrations", new StringContent("{\"vm\": ", Encoding.UTF8, "application/json")))
            Assert.Contains("JSON", (await ErrorOf(malformed, 400)).GetProperty("message").GetString());

        using (var wrongType = await http.PostAsync(coordinator.Api + "/api/migrations/7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99/speed",
                   new StringContent("{\"bytesPerSecond\": \"fast\"}", Encoding.UTF8, "application/json")))
            await ErrorOf(wrongType, 400);

        using (var negative = await http.PostAsync(coordinator.Api + "/api/migrations/7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99/speed",
                   new StringContent("{\"bytesPerSecond\": -5}", Encoding.UTF8, "application/json")))
            Assert.Contains("bytesPerSecond", (await ErrorOf(negative, 400)).GetProperty("message").GetString());

        using (var unknown = await http.PostAsync(coordinator.Api + "/api/migrations/7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99/speed",
                   new StringContent("{\"bytesPerSecond\": 1000}", Encoding.UTF8, "application/json")))
            await ErrorOf(unknown, 404);

        using (var badFilter = await http.GetAsync(coordinator.Api + "/api/migrations?active=maybe"))
            await ErrorOf(badFilter, 400);
    }

    [Fact]
    public async Task Lookups_and_commands_for_unknown_migration_ids_answer_404_and_write_nothing_to_the_journal()
    {
        using var http = Client(TokenCoordinator.Token);
        var before = JournalRows();
        for (var i = 0; i < 10; i++)
        {
            var id = Guid.NewGuid();
            using (var show = await http.GetAsync($"{coordinator.Api}/api/migrations/{id}"))
                Assert.Equal("MIGRATION_NOT_FOUND", (await ErrorOf(show, 404)).GetProperty("code").GetString());
            using (var cancel = await http.PostAsync($"{coordinator.Api}/api/migrations/{id}/cancel", new StringContent("{}", Encoding.UTF8, "application/json")))
                await ErrorOf(cancel, 404);
        }
        // not even sharding's bookkeeping: no saga was woken to say it does not exist (remember-entities journals each one)
        Assert.Equal(before, JournalRows());
    }

    /// <summary>
    /// Every persistence id of the Coordinator's journal with its row count, sharding's own included; not the audit
    /// trail, which records every change asked for, refused ones included, by design.
    /// </summary>
    private List<string> JournalRows()
    {
        var file = Path.Combine(coordinator.DataDirectory, "journal.db");
        var readOnly = new Microsoft.Data.Sqlite.SqliteConnectionStringBuilder
            { DataSource = file, Mode = Microsoft.Data.Sqlite.SqliteOpenMode.ReadOnly, Pooling = false }.ToString();
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection(readOnly);
        connection.Open();
        using var command = connection.CreateCommand();
        // the journal makes its table at its first write: none yet is an empty journal
        command.CommandText = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'journal'";
        if ((long)command.ExecuteScalar()! == 0) return [];
        command.CommandText = "SELECT persistence_id, COUNT(*) FROM journal WHERE persistence_id <> 'audit' GROUP BY persistence_id ORDER BY persistence_id";
        using var reader = command.ExecuteReader();
        var rows = new List<string>();
        while (reader.Read()) rows.Add($"{reader.GetString(0)} {reader.GetInt64(1)}");
        return rows;
    }

    [Fact]
    public async Task A_non_loopback_address_without_a_token_is_refused_with_exit_2()
    {
        var (exit, stderr) = await RunCoordinatorToExitAsync("0.0.0.0", []);
        Assert.Equal(2, exit);
        Assert.Contains("is not loopback: set an API token", stderr);
    }
}
