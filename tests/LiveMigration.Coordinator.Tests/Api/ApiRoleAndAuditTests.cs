using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Akka.Hosting;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Audit;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LiveMigration.Coordinator.Tests.Api;

/// <summary>
/// The Coordinator's real endpoint set (<see cref="CoordinatorApiHosting"/>) behind its security, on Kestrel in process,
/// with the audit trail's actor on a SQLite journal in a temporary folder (no cluster: the role check answers before
/// any endpoint runs). Two test endpoints stand for a change that succeeds and one that is refused.
/// </summary>
public sealed class ApiRoleAndAuditTests : IAsyncLifetime
{
    private const string OperatorToken = "operator-token-in-process";
    private const string ViewerToken = "viewer-token-in-process";
    private readonly string _data = Directory.CreateTempSubdirectory("lsm-audit-").FullName;
    private WebApplication _app = null!;
    private string _url = "";

    public async Task InitializeAsync() => (_app, _url) = await StartAsync(_data);

    public async Task DisposeAsync()
    {
        await _app.DisposeAsync();
        Directory.Delete(_data, recursive: true);
    }

    private static async Task<(WebApplication App, string Url)> StartAsync(string data)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddAkka("lsm-api-test", akka => akka
            .AddHocon("akka.actor.serialize-messages = on", HoconAddMode.Prepend)
            .WithProtocolSerializer()
            .WithMigrationJournal(new JournalOptions(data))
            .WithActors((system, registry) => registry.Register<AuditProxy>(system.ActorOf(AuditActor.SupervisedProps(new AuditOptions()), "audit"))));
        builder.Services.AddCoordinatorApi();
        var app = builder.Build();
        app.UseCoordinatorApi(new ApiTokens(OperatorToken, ViewerToken), new JournalOptions(data));
        app.MapPost("/api/test/succeeds", (JsonElement body) => Results.Ok(new { done = true }));
        app.MapPost("/api/test/refused", () => Results.Json(new ApiError("VM_BUSY", "the VM is busy"), statusCode: StatusCodes.Status409Conflict));
        await app.StartAsync();
        return (app, app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
    }

    private HttpClient Client(string? token)
    {
        var http = new HttpClient { BaseAddress = new Uri(_url) };
        if (token is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return http;
    }

    /// <summary>Every route of the Coordinator with its methods, the route values filled with a placeholder.</summary>
    private IReadOnlyList<(string Method, string Path)> Routes() =>
        ((IEndpointRouteBuilder)_app).DataSources.SelectMany(d => d.Endpoints).OfType<RouteEndpoint>()
            .Where(e => !e.RoutePattern.RawText!.StartsWith("/api/test/", StringComparison.Ordinal))
            .SelectMany(e => (e.Metadata.GetMetadata<IHttpMethodMetadata>()?.HttpMethods ?? ["GET"])
                .Select(m => (m, Regex.Replace("/" + e.RoutePattern.RawText!.TrimStart('/'), @"\{[^}]+\}", "x"))))
            .ToList();

    private async Task<JsonElement> AuditAsync(string query = "")
    {
        using var http = Client(OperatorToken);
        using var response = await http.GetAsync("/api/audit" + query);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.Clone();
    }

    [Fact]
    public async Task Every_endpoint_that_changes_something_refuses_the_viewer_with_403_FORBIDDEN_and_the_audit_records_each_refusal()
    {
        var changes = Routes().Where(r => r.Method is not ("GET" or "HEAD")).ToList();
        Assert.Contains(("POST", "/api/migrations"), changes);
        Assert.Contains(("POST", "/api/vms/x/x"), changes);
        Assert.Contains(("POST", "/api/domains"), changes);
        Assert.Contains(("POST", "/api/cluster/down-unreachable"), changes);
        using var viewer = Client(ViewerToken);

        foreach (var (method, path) in changes)
        {
            using var request = new HttpRequestMessage(new HttpMethod(method), path) { Content = JsonContent.Create(new { probe = path }) };
            using var response = await viewer.SendAsync(request);
            var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
            Assert.True(response.StatusCode == HttpStatusCode.Forbidden, $"{method} {path}: {(int)response.StatusCode}");
            Assert.Equal("FORBIDDEN", error.GetProperty("code").GetString());
            Assert.Contains("viewer token", error.GetProperty("message").GetString());
        }

        var entries = (await AuditAsync($"?limit={changes.Count}")).GetProperty("entries").EnumerateArray().ToList();
        Assert.Equal(changes.Count, entries.Count);
        Assert.All(entries, e => Assert.Equal(("viewer", 403, "FORBIDDEN"), (e.GetProperty("role").GetString(), e.GetProperty("status").GetInt32(), e.GetProperty("errorCode").GetString())));
        Assert.Equal(changes.Select(c => $"{c.Method} {c.Path}").Order(), entries.Select(e => $"{e.GetProperty("method").GetString()} {e.GetProperty("path").GetString()}").Order());
    }

    [Fact]
    public async Task Every_read_needs_only_the_viewer_role_except_the_audit_which_needs_the_operator()
    {
        var reads = Routes().Where(r => r.Method == "GET").ToList();
        Assert.Contains(("GET", "/api/migrations/x/events"), reads);
        Assert.Contains(("GET", "/metrics"), reads);
        foreach (var (method, path) in reads)
        {
            var request = new DefaultHttpContext().Request;
            request.Method = method;
            request.Path = path;
            Assert.Equal(path == ApiTokens.AuditPath ? ApiRole.Operator : ApiRole.Viewer, ApiTokens.Required(request));
        }

        using var viewer = Client(ViewerToken);
        Assert.Equal(HttpStatusCode.OK, (await viewer.GetAsync("/metrics")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await viewer.GetAsync("/")).StatusCode);
        using var audit = await viewer.GetAsync("/api/audit");
        Assert.Equal(HttpStatusCode.Forbidden, audit.StatusCode);
        Assert.Equal("FORBIDDEN", JsonDocument.Parse(await audit.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
    }

    [Fact]
    public async Task No_token_or_an_unknown_one_stays_401_and_is_not_audited()
    {
        foreach (var token in new string?[] { null, "not-a-token", ViewerToken + "x", OperatorToken[..^1] })
        {
            using var http = Client(token);
            using var response = await http.PostAsJsonAsync("/api/test/succeeds", new { });
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Equal("UNAUTHORIZED", JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }
        Assert.Empty((await AuditAsync()).GetProperty("entries").EnumerateArray());
    }

    [Fact]
    public async Task The_operator_changes_and_the_audit_shows_each_request_with_its_body_client_and_outcome_newest_first()
    {
        using var operatorClient = Client(OperatorToken);
        using (var ok = await operatorClient.PostAsJsonAsync("/api/test/succeeds", new { vm = "web-01", rate = 5 }))
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        using (var refused = await operatorClient.PostAsJsonAsync("/api/test/refused", new { }))
        {
            Assert.Equal(HttpStatusCode.Conflict, refused.StatusCode);
            // the answer held for the audit reaches the client whole
            Assert.Equal("VM_BUSY", JsonDocument.Parse(await refused.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }

        var entries = (await AuditAsync()).GetProperty("entries").EnumerateArray().ToList();

        Assert.Equal(2, entries.Count);
        var (refusedEntry, succeeded) = (entries[0], entries[1]);
        Assert.Equal(("/api/test/refused", 409, "VM_BUSY"), (refusedEntry.GetProperty("path").GetString(), refusedEntry.GetProperty("status").GetInt32(), refusedEntry.GetProperty("errorCode").GetString()));
        Assert.Equal(("POST", "/api/test/succeeds", 200, JsonValueKind.Null), (succeeded.GetProperty("method").GetString(), succeeded.GetProperty("path").GetString(),
            succeeded.GetProperty("status").GetInt32(), succeeded.GetProperty("errorCode").ValueKind));
        Assert.Equal(("operator", "127.0.0.1"), (succeeded.GetProperty("role").GetString(), succeeded.GetProperty("client").GetString()));
        Assert.Equal("""{"vm":"web-01","rate":5}""", succeeded.GetProperty("body").GetString());
        Assert.True(succeeded.GetProperty("number").GetInt64() < refusedEntry.GetProperty("number").GetInt64());
        Assert.DoesNotContain(OperatorToken, (await AuditAsync()).GetRawText());
    }

    [Fact]
    public async Task A_body_over_the_audit_limit_is_kept_cut_and_says_so()
    {
        using var operatorClient = Client(OperatorToken);
        var name = new string('n', 3 * AuditLimitsChars);
        using (var ok = await operatorClient.PostAsJsonAsync("/api/test/succeeds", new { name }))
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);

        var entry = (await AuditAsync()).GetProperty("entries")[0];
        Assert.Equal(AuditLimitsChars, entry.GetProperty("body").GetString()!.Length);
        Assert.True(entry.GetProperty("bodyTruncated").GetBoolean());
    }

    private const int AuditLimitsChars = Shared.Protocol.AuditLimits.MaxBodyChars;

    [Fact]
    public async Task Pages_follow_next_and_since_and_bad_paging_is_a_400()
    {
        using var operatorClient = Client(OperatorToken);
        for (var i = 0; i < 5; i++)
            (await operatorClient.PostAsJsonAsync("/api/test/succeeds", new { i })).Dispose();

        var first = await AuditAsync("?limit=2");
        var second = await AuditAsync($"?limit=2&before={first.GetProperty("next").GetInt64()}");
        var third = await AuditAsync($"?limit=2&before={second.GetProperty("next").GetInt64()}");
        var bodies = new[] { first, second, third }.SelectMany(p => p.GetProperty("entries").EnumerateArray()).Select(e => e.GetProperty("body").GetString()).ToList();
        Assert.Equal(["{\"i\":4}", "{\"i\":3}", "{\"i\":2}", "{\"i\":1}", "{\"i\":0}"], bodies);
        Assert.Equal(JsonValueKind.Null, third.GetProperty("next").ValueKind);
        Assert.Empty((await AuditAsync("?since=2999-01-01T00:00:00Z")).GetProperty("entries").EnumerateArray());
        Assert.Equal(5, (await AuditAsync("?since=2000-01-01T00:00:00Z")).GetProperty("entries").GetArrayLength());

        foreach (var bad in new[] { "?limit=0", "?limit=1001", "?limit=x", "?before=-1", "?since=yesterday" })
        {
            using var response = await operatorClient.GetAsync("/api/audit" + bad);
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            Assert.Equal("INVALID_ARGUMENT", JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }
    }

    [Fact]
    public async Task The_audit_is_read_back_from_the_journal_after_the_Coordinator_restarts()
    {
        using (var operatorClient = Client(OperatorToken))
            (await operatorClient.PostAsJsonAsync("/api/test/refused", new { before = "restart" })).Dispose();
        await _app.DisposeAsync();

        (_app, _url) = await StartAsync(_data);

        var entry = Assert.Single((await AuditAsync()).GetProperty("entries").EnumerateArray());
        Assert.Equal(("""{"before":"restart"}""", 409), (entry.GetProperty("body").GetString(), entry.GetProperty("status").GetInt32()));
    }
}
