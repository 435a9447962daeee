using System.Net;
using System.Text.Json;
using Akka.Actor;
using LiveMigration.Coordinator.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LiveMigration.Coordinator.Tests.Api;

/// <summary>
/// The error handling in front of the endpoints, on a real Kestrel on a free loopback port: an endpoint that throws
/// gets a 500 in the API's shape with no stack trace (the log gets it), a cluster that does not answer a 503.
/// </summary>
public sealed class ApiErrorHandlingTests : IAsyncLifetime
{
    private const string Secret = "in-process-token";
    private readonly List<string> _logged = [];
    private WebApplication _app = null!;
    private string _url = "";

    public async Task InitializeAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders().AddProvider(new ListLoggerProvider(_logged));
        // As the Coordinator sets it: a body that does not bind throws, and the error handler shapes the answer.
        builder.Services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        _app = builder.Build();
        _app.UseApiSecurity(Secret);
        _app.MapGet("/api/boom", string () => throw new InvalidOperationException("secret internal detail"));
        _app.MapGet("/api/slow", string () => throw new AskTimeoutException("no answer from the shard region"));
        _app.MapGet("/api/fine", () => Results.Ok(new { ok = true }));
        _app.MapPost("/api/echo", (EchoBody body) => Results.Ok(body));
        _app.MapGet("/healthz", () => Results.Ok(new { status = "up" }));
        await _app.StartAsync();
        _url = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
    }

    public async Task DisposeAsync() => await _app.DisposeAsync();

    private HttpClient Client(string? token = Secret)
    {
        var http = new HttpClient { BaseAddress = new Uri(_url) };
        if (token is not null) http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        return http;
    }

    [Fact]
    public async Task An_exception_is_a_500_with_code_INTERNAL_and_no_stack_trace_while_the_log_gets_the_detail()
    {
        using var http = Client();
        using var response = await http.GetAsync("/api/boom");
        var body = await response.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        var error = JsonDocument.Parse(body).RootElement;
        Assert.Equal("INTERNAL", error.GetProperty("code").GetString());
        Assert.DoesNotContain("secret internal detail", body);
        Assert.DoesNotContain(" at ", body);
        lock (_logged) Assert.Contains(_logged, l => l.Contains("secret internal detail") && l.Contains("/api/boom"));
    }

    [Fact]
    public async Task A_cluster_that_does_not_answer_is_a_503()
    {
        using var http = Client();
        using var response = await http.GetAsync("/api/slow");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("UNAVAILABLE", JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
    }

    [Fact]
    public async Task Only_the_exact_bearer_token_opens_the_api_and_health_needs_none()
    {
        foreach (var (token, expected) in new[] { (Secret, HttpStatusCode.OK), ("in-process-tokem", HttpStatusCode.Unauthorized),
                     ("", HttpStatusCode.Unauthorized), (Secret[..^1], HttpStatusCode.Unauthorized) })
        {
            using var http = Client(token.Length == 0 ? null : token);
            Assert.Equal(expected, (await http.GetAsync("/api/fine")).StatusCode);
        }
        using var basic = new HttpClient { BaseAddress = new Uri(_url) };
        basic.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Basic", Secret);
        Assert.Equal(HttpStatusCode.Unauthorized, (await basic.GetAsync("/api/fine")).StatusCode);
        using var none = Client(null);
        Assert.Equal(HttpStatusCode.OK, (await none.GetAsync("/healthz")).StatusCode);
    }

    [Fact]
    public async Task A_path_or_method_no_endpoint_takes_gets_the_error_shape_too()
    {
        using var http = Client();
        foreach (var (request, status, code) in new[]
                 {
                     (new HttpRequestMessage(HttpMethod.Get, "/api/no/such/thing"), HttpStatusCode.NotFound, "NO_SUCH_PATH"),
                     (new HttpRequestMessage(HttpMethod.Delete, "/api/fine"), HttpStatusCode.MethodNotAllowed, "METHOD_NOT_ALLOWED"),
                 })
        {
            using var response = await http.SendAsync(request);
            Assert.Equal(status, response.StatusCode);
            Assert.Equal(code, JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }
    }

    [Fact]
    public async Task A_json_body_in_a_charset_other_than_utf8_is_refused_as_not_json_instead_of_failing_to_decode()
    {
        using var http = Client();
        foreach (var charset in new[] { "bogus", "utf-16" })
        {
            var content = new StringContent("{\"text\": \"x\"}");
            content.Headers.ContentType = System.Net.Http.Headers.MediaTypeHeaderValue.Parse($"application/json; charset={charset}");
            using var response = await http.PostAsync("/api/echo", content);
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, response.StatusCode);
            Assert.Equal("NOT_JSON", JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("code").GetString());
        }
        using var utf8 = await http.PostAsync("/api/echo", new StringContent("{\"text\": \"x\"}", System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, utf8.StatusCode);
    }

    [Fact]
    public async Task A_body_of_the_wrong_shape_is_explained_in_the_clients_terms_without_type_names()
    {
        using var http = Client();
        foreach (var (body, expected) in new[]
                 {
                     ("{\"text\": 5}", "the value at $.text is of the wrong type"),
                     ("{\"text\": ", "not valid JSON"),
                     ("", "none was sent"),
                     ("null", "none was sent"),
                 })
        {
            using var response = await http.PostAsync("/api/echo", new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
            var text = await response.Content.ReadAsStringAsync();
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            var message = JsonDocument.Parse(text).RootElement.GetProperty("message").GetString()!;
            Assert.Contains(expected, message);
            Assert.DoesNotContain("System.", message);
            Assert.DoesNotContain(nameof(EchoBody), message);
        }
    }

    public sealed record EchoBody(string? Text);

    private sealed class ListLoggerProvider(List<string> lines) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new ListLogger(lines);
        public void Dispose() { }
    }

    private sealed class ListLogger(List<string> lines) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (lines) lines.Add($"{logLevel} {formatter(state, exception)} {exception}");
        }
    }
}
