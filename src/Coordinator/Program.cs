using Akka.Hosting;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Shared.Hosting;

// The Coordinator: runs the migration sagas, the inventory and the HTTP API. It never touches
// storage or QEMU itself; the hosts do, on its commands.
// No watch on appsettings.json: the default watches the working directory recursively, which for a local cluster holds the
// journal and every node's log, and handling those change events cost 13% of the Coordinator's CPU under load (issue 11).
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = [ConfigWatch.Off] });
builder.Configuration.AddJsonFile("appsettings.json", optional: true)
    .AddEnvironmentVariables("LSM_")
    .AddCommandLine(ClusterNodeSettings.ExpandFlags(args), CoordinatorConfiguration.Switches.ToDictionary());

CoordinatorSettings settings;
try
{
    CoordinatorConfiguration.RefuseSecretArguments(args);
    settings = CoordinatorConfiguration.From(builder.Configuration);
    Directory.CreateDirectory(settings.DataDirectory);
    FaultPlan.Current = FaultPlan.FromEnvironment("coordinator", settings.DataDirectory);
    if (FaultPlan.Current.IsActive && settings.ApiToken is not null)
        throw new ArgumentException($"{FaultPlan.PlanVariable} is refused with an API token: crash injection never runs in a production setup");
}
catch (Exception e) when (e is ArgumentException or FormatException)
{
    Console.Error.WriteLine($"Coordinator: {e.Message}");
    Console.Error.WriteLine("usage: Coordinator --port 4053 --seed akka.ssl.tcp://lsm@127.0.0.1:4053 --data-dir var/coordinator --http http://127.0.0.1:9110 [--api-token-file FILE [--viewer-token-file FILE]] [--api-certificate FILE --api-key FILE (--http https://...)] [--postgres CONNECTION] [--tls-certificate FILE [--tls-key FILE] --tls-ca FILE | --insecure-remoting]");
    return 2;
}

builder.WebHost.UseUrls(settings.HttpUrl);
// A backstop: the API's own check (ApiSecurity) answers oversized bodies with its JSON 413 before this is reached.
builder.WebHost.ConfigureKestrel(k =>
{
    k.Limits.MaxRequestBodySize = 4 * ApiSecurity.MaxRequestBodyBytes;
    if (settings.ApiCertificate is { } certificate)
        k.ConfigureHttpsDefaults(https => https.ServerCertificate = certificate);
});
// Requests are not worth a log line each; warnings and errors are.
builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
builder.Services.AddAkka(ClusterNodeSettings.SystemName, akka => akka.WithCoordinator(settings));
// after Akka's hosted service, before the web server's: the API answers once the journal is warm
builder.Services.AddHostedService<LiveMigration.Coordinator.Persistence.JournalWarmupGate>();
var journal = new LiveMigration.Coordinator.Persistence.JournalOptions(settings.DataDirectory, settings.PostgresConnectionString);
builder.Services.AddCoordinatorApi(journal);

var app = builder.Build();
app.UseCoordinatorApi(settings.Tokens, journal);
Console.WriteLine($"Coordinator: journal {(settings.PostgresConnectionString is null ? $"SQLite under {settings.DataDirectory}" : "PostgreSQL")}, API {settings.HttpUrl}");
await app.RunAsync();
return 0;
